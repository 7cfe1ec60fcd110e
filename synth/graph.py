"""Tool-chain graph: the LLM proposes plausible chains per server; transitions proposed more often weigh
more; candidate chains are sampled by seeded, weighted, length-bounded random walks (a real random walk,
not an exhaustive DFS) and kept only when verified by majority vote and by back-translation
(chain -> query -> chain must return the same chain)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict

from clients.llm import LLMClient, LLMError
from gym_server.models import ServerDoc
from synth.models import ToolChain, stable_id

START = "<start>"


def tool_list(server: ServerDoc) -> str:
    return "\n".join(f"- {t.name}: {t.description}" for t in server.tools)


def server_header(server: ServerDoc) -> str:
    """The server-and-tools preamble every synthesis prompt about one server starts from."""
    return f"Server {server.name}. Tools:\n{tool_list(server)}\n\n"


async def ask_for_query(llm: LLMClient, prompt: str) -> str | None:
    """A synthesis prompt whose answer is one user request: the request, or None when the model gave none."""
    answer = await llm.chat_json([{"role": "user", "content": prompt + 'Reply with JSON: {"query": REQUEST}'}])
    query = answer.get("query") if isinstance(answer, dict) else None
    return query if isinstance(query, str) and query.strip() else None


async def propose_chains(llm: LLMClient, server: ServerDoc, rounds: int = 3) -> list[list[str]]:
    """Several independent proposal rounds; tool names the server does not have are dropped."""
    names = {t.name for t in server.tools}
    proposals: list[list[str]] = []
    for round_ in range(rounds):
        prompt = (
            "### STAGE: propose_chains\n"
            f"Server {server.name}: {server.description}\nTools:\n{tool_list(server)}\n\n"
            f"Propose realistic multi-step workflows a user could need (round {round_ + 1}). Reply with JSON: "
            '{"chains": [{"tools": [TOOL, ...], "task": SHORT TASK}]}'
        )
        answer = await llm.chat_json([{"role": "user", "content": prompt}])
        for chain in (answer.get("chains") if isinstance(answer, dict) else None) or []:
            tools = [t for t in (chain.get("tools") or []) if t in names] if isinstance(chain, dict) else []
            if tools:
                proposals.append(tools)
    return proposals


def transition_graph(proposals: list[list[str]]) -> dict[str, dict[str, float]]:
    """Edge weight = how often a transition was proposed (start edges from `START`)."""
    graph: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for chain in proposals:
        previous = START
        for tool in chain:
            if tool != previous:
                graph[previous][tool] += 1.0
            previous = tool
    return {k: dict(v) for k, v in graph.items()}


def random_walks(graph: dict[str, dict[str, float]], n: int, min_len: int = 2, max_len: int = 5, seed: int = 0, max_tries: int | None = None) -> list[tuple[list[str], float]]:
    """Up to `n` distinct chains, each a weighted random walk from `START`; weight = product of transition
    probabilities. A walk stops at `max_len`, at a dead end, or at random once `min_len` is reached."""
    rng = random.Random(seed)
    found: dict[tuple[str, ...], float] = {}
    for _ in range(max_tries or n * 20):
        if len(found) >= n or START not in graph:
            break
        node, path, prob = START, [], 1.0
        while len(path) < max_len:
            edges = {k: w for k, w in graph.get(node, {}).items() if k not in path}
            if not edges:
                break
            total = sum(edges.values())
            pick = rng.choices(list(edges), weights=list(edges.values()))[0]
            prob *= edges[pick] / total
            path.append(pick)
            node = pick
            if len(path) >= min_len and rng.random() < 0.35:
                break
        if len(path) >= min_len:
            found.setdefault(tuple(path), prob)
    return [(list(k), v) for k, v in found.items()]


async def verify_chain(llm: LLMClient, server: ServerDoc, tools: list[str], voters: int = 3) -> ToolChain:
    chain = ToolChain(id=stable_id(server.name, tools), server=server.name, tools=tools)
    try:
        votes = await asyncio.gather(*(
            llm.chat_json([{"role": "user", "content": (
                f"### STAGE: verify_chain\nVoter {i + 1}. {server_header(server)}"
                f"Is this tool sequence a coherent workflow a real user would run: {json.dumps(tools)}? "
                'Reply with JSON: {"plausible": true|false, "reason": WHY}'
            )}]) for i in range(voters)
        ))  # fmt: skip
        chain.votes = [bool(v.get("plausible")) if isinstance(v, dict) else False for v in votes]
        if sum(chain.votes) * 2 <= voters:
            chain.reason = f"majority vote rejected it ({sum(chain.votes)}/{voters})"
            return chain
        text = await ask_for_query(llm, (
            f"### STAGE: chain_to_query\n{server_header(server)}"
            f"Write one user request that needs exactly these tools in this order: {json.dumps(tools)}. "
        ))  # fmt: skip
        if text is None:
            chain.reason = "back-translation produced no query"
            return chain
        back = await llm.chat_json([{"role": "user", "content": (
            f"### STAGE: query_to_chain\n{server_header(server)}"
            f"Which tools, in order, does this request need? {text}\nReply with JSON: " '{"tools": [TOOL, ...]}'
        )}])  # fmt: skip
        chain.back_translation = [t for t in (back.get("tools") or []) if isinstance(t, str)] if isinstance(back, dict) else []
        if chain.back_translation != tools:
            chain.reason = f"back-translation gave {chain.back_translation}, not the chain"
            return chain
    except LLMError as exc:
        chain.reason = f"verification failed: {exc}"
        return chain
    chain.verified = True
    return chain


async def sample_chains(llm: LLMClient, server: ServerDoc, n: int, seed: int = 0, min_len: int = 2, max_len: int = 5) -> list[ToolChain]:
    graph = transition_graph(await propose_chains(llm, server))
    walks = random_walks(graph, n, min_len, max_len, seed)
    chains = await asyncio.gather(*(verify_chain(llm, server, tools) for tools, _ in walks))
    for chain, (_, weight) in zip(chains, walks):
        chain.weight = weight
    return list(chains)
