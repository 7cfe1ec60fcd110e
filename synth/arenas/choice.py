"""Choice arenas: a question that exactly one of two tools answers. A shop holds one item; `get_price()` and
`get_stock()` take no arguments, and the question asks for either the item's price or its stock (half the
arenas each). Calling the other tool is a well-formed call that returns a record without the answer (prices
are 100-999, stocks 1-60), so it scores 0; the right call scores 1.

These are the arenas of GRPO's learning test: a policy that picks either tool half the time sits at 50%
success, and only the choice (conditioned on the question) separates success from failure, so a training
loop that learns must move that choice, and one with a wrong sign must move it the other way. Nothing else
is hard on purpose (no argument to copy), so the test measures the training loop, not the model's size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from gym_server.models import Arena, Provenance

TOOLS = [
    {"name": name, "description": description,
     "inputSchema": {"type": "object", "properties": {}},
     "annotations": {"readOnlyHint": True, "openWorldHint": False}}
    for name, description in (("get_price", "The item's price."), ("get_stock", "The item's stock."))
]  # fmt: skip

IMPLEMENTATION = '''
def get_price(db):
    return db.execute("SELECT name, price FROM items").fetchone()


def get_stock(db):
    return db.execute("SELECT name, stock FROM items").fetchone()
'''

DDL = ["CREATE TABLE items (name TEXT PRIMARY KEY, price INTEGER, stock INTEGER)"]
QUESTIONS = {"get_price": "What does the {name} cost?", "get_stock": "How many of the {name} are in stock?"}
NAMES = ["lamp", "kettle", "chair", "desk", "mug", "radio", "clock", "fan", "stool", "vase", "rug", "mirror"]


def generate(n: int, seed: int = 0, prefix: str = "choice", asks: tuple[str, ...] = ("get_price", "get_stock")) -> Iterator[Arena]:
    """`n` arenas, reproducible from `seed`, whose questions take turns asking for what the tools in `asks`
    return (both by default: the right tool depends on the question; one: the same tool is always right);
    ids `{prefix}-{seed}-{i}`."""
    if not asks or any(a not in QUESTIONS for a in asks):
        raise ValueError(f"asks must name tools among {sorted(QUESTIONS)}")
    rng = random.Random(seed)
    for i in range(n):
        item = {"name": rng.choice(NAMES), "price": rng.randint(100, 999), "stock": rng.randint(1, 60)}
        tool = asks[i % len(asks)]
        answer = item["price" if tool == "get_price" else "stock"]
        question = QUESTIONS[tool].format(name=item["name"])
        yield Arena.model_validate({
            "id": f"{prefix}-{seed}-{i:04d}", "domain": "choice", "scenario_type": "single_hop", "question": question,
            "final_answer": answer, "tools": TOOLS, "implementation": IMPLEMENTATION,
            "subtasks": [{"id": "s1", "question": question, "answer": answer, "gold_call": {"tool": tool, "arguments": {}}}],
            "initial_state": {"ddl": DDL, "rows": {"items": [item]}},
            "provenance": Provenance(source="offline", generator="synth.arenas.choice", seed=seed),
        })  # fmt: skip


def other_tool(tool: str) -> str:
    """The tool that does not answer a question asking for `tool`'s field."""
    return "get_stock" if tool == "get_price" else "get_price"
