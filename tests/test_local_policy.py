"""The local transformers policy and the tiny-model factory: no download, real MCP episodes."""

from __future__ import annotations

import json

import pytest

from clients.gym_client import GymClient
from clients.policies import OraclePolicy, local_policy
from clients.runner import run_episode
from clients.tool_calls import parse_tool_calls

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    from trainer.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny")


def test_parse_tool_calls():
    content, calls = parse_tool_calls('I will look. <tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call>')
    assert content == "I will look." and calls[0]["function"]["name"] == "get_flight"
    assert json.loads(calls[0]["function"]["arguments"]) == {"flight_id": "AA100"}
    _, two = parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>')
    assert [c["function"]["name"] for c in two] == ["a", "b"]
    _, broken = parse_tool_calls('<tool_call>{"name": "get_flight", "arguments": {"flight_id": </tool_call>')
    assert broken[0]["function"]["name"] == "get_flight" and broken[0]["function"]["arguments"].startswith("{")
    assert parse_tool_calls("just text") == ("just text", [])


def test_tiny_model_template_marks_only_assistant_turns(tiny):
    model, tokenizer = tiny
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    messages = [
        {"role": "user", "content": "Seats on AA100?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_flight", "arguments": '{"flight_id": "AA100"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": '{"seats_left": 12}'},
        {"role": "assistant", "content": "12"},
    ]  # fmt: skip
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    kept = tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert kept == '<tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call><|im_end|>12<|im_end|>'


def _memorize(model, tokenizer, record, steps: int = 300) -> None:
    """Overfit the tiny model on one oracle conversation (assistant tokens only), so it can replay it."""
    out = tokenizer.apply_chat_template(record.messages, tools=record.tools, return_dict=True, return_assistant_tokens_mask=True)
    ids = torch.tensor([out["input_ids"]])
    labels = torch.where(torch.tensor([out["assistant_masks"]]) == 1, ids, torch.tensor(-100))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    model.eval()


async def test_local_policy_plays_through_mcp_and_can_solve_an_arena(gym, http, tiny):
    model, tokenizer = tiny
    client = GymClient(gym.url, http)
    untrained = await run_episode(client, local_policy(model, tokenizer, max_turns=2, max_tokens=16), "airline-seats-aa100")
    assert untrained.error is None and untrained.reward is not None and untrained.usage.completion_tokens > 0
    oracle = await run_episode(client, OraclePolicy(), "airline-seats-aa100")
    _memorize(model, tokenizer, oracle)
    played = await run_episode(client, local_policy(model, tokenizer, max_turns=3, max_tokens=48), "airline-seats-aa100")
    assert played.error is None, played.error
    assert played.call_log[0].tool == "get_flight" and played.call_log[0].arguments == {"flight_id": "AA100"}
    assert played.reward.reward == 1.0 and played.final_answer == "12"
    assert played.policy == "local" and played.stop_reason == "answer"


def test_eval_local_policy_loads_a_saved_model_with_from_pretrained(gym, tmp_path):
    import subprocess
    import sys

    from trainer.tiny import save_tiny

    folder = save_tiny(tmp_path / "tiny-model")
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "gym_server.cli", "eval", "--policy", "local", "--model", str(folder), "--gym", gym.url,
         "--arenas", "airline-seats-aa100,clinic-refills-rx12", "--max-turns", "2", "--max-tokens", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert {r["arena_id"] for r in records} == {"airline-seats-aa100", "clinic-refills-rx12"}
    assert all(r["policy"] == "local" and r["error"] is None and r["usage"]["completion_tokens"] > 0 for r in records)
    missing = subprocess.run([sys.executable, "-m", "gym_server.cli", "eval", "--policy", "local", "--model", str(tmp_path / "nope"),
                              "--gym", gym.url, "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 1 and "cannot load model" in missing.stderr


def test_identical_conversations_are_rendered_once_and_others_are_not(tiny):
    """A GRPO group opens its episodes with one conversation: the chat template runs once for it. Anything that
    changes the rendering (a message, a tool, the order of a tool's keys) is a new prompt."""
    from clients.local_model import TokenChatModel

    _, tokenizer = tiny
    model = TokenChatModel(tokenizer, lambda ids, budget: ([], []))
    renders: list[int] = []
    real = model.render
    model.render = lambda *a: renders.append(1) or real(*a)  # type: ignore[method-assign]
    tool = {"type": "function", "function": {"name": "get_flight", "description": "d", "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "Seats on AA100?"}]
    first = model.prompt_ids(messages, [tool])
    assert first == model.encode(real(messages, [tool], True))
    again = model.prompt_ids([dict(m) for m in messages], [json.loads(json.dumps(tool))])
    assert again == first and len(renders) == 1
    again.append(7)  # a caller's list is its own
    assert model.prompt_ids(messages, [tool]) == first
    reordered = {"function": tool["function"], "type": "function"}
    other_tool = {**tool, "function": {**tool["function"], "name": "get_seat"}}
    assert model.prompt_ids(messages, [other_tool]) != first
    model.prompt_ids(messages, [reordered])
    model.prompt_ids([{"role": "user", "content": "Seats on AA101?"}], [tool])
    assert len(renders) == 4
    for i in range(TokenChatModel.PROMPTS_KEPT + 5):  # bounded
        model.prompt_ids([{"role": "user", "content": str(i)}], [])
    assert len(model._prompts) == TokenChatModel.PROMPTS_KEPT
