"""One episode, whoever plays it: the same scripted policy and run seed played through `astra-gym eval` and
through GRPO's rollout give the same transcript (messages, tool calls, tool results, injected failures,
reward), with a turn of parallel calls, a malformed call and an episode that hits the turn limit."""

from __future__ import annotations

import json

import pytest

from clients.agent import DEFAULT_SYSTEM_PROMPT
from clients.evaluation import EvalConfig, run_eval
from clients.gym_session import GymSession
from clients.local_model import TokenChatModel
from clients.policies import ChatPolicy
from clients.runner import episode_seed
from gym_server.failures import injected_failure
from gym_server.models import FailurePolicy
from trainer.rollout import MCPRollout

pytest.importorskip("torch")

PARALLEL, LIMIT = "clinic-specialties-d01-d04", "airline-seats-aa100"
FLIGHT = '<tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call>'
SCRIPTS = {  # by question: the text of each assistant turn
    "What are the specialties of doctors D01 and D04?": [
        '<tool_call>{"name": "get_doctor", "arguments": {"doctor_id": "D01"}}</tool_call>'
        '<tool_call>{"name": "get_doctor", "arguments": {"doctor_id": "D04"}}</tool_call>',
        "D01: cardiology; D04: pediatrics",
    ],
    "How many seats are still free on flight AA100?": [  # never answers: the third turn is the last
        '<tool_call>{"name": "get_flight", "arguments": {"flight_id": </tool_call>', FLIGHT, FLIGHT, "12",
    ],
}
FAILURES = FailurePolicy(rate=0.5)


@pytest.fixture(scope="module")
def tokenizer():
    from trainer.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny")[1]


def scripted_sampler(tokenizer):
    """A policy that depends only on what it is shown: the question picks the script, the number of
    assistant headers the turn. Both runs get a fresh copy; neither shares state with the other."""

    def sample(ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        context = tokenizer.decode(ids)
        script = next(turns for question, turns in SCRIPTS.items() if question in context)
        turn = context.count("<|im_start|>assistant") - 1
        new = tokenizer(script[turn], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return new, [-0.5] * len(new)

    return sample


def run_seed() -> int:
    """A run seed under which the gym injects a failure into the turn-limit episode (so equal seeds are
    visible in the transcript), and gives both parallel calls the same fate (their order of arrival at the
    gym is up to the network, so a seed that tells them apart would make either transcript a coin toss)."""
    for seed in range(1000):
        parallel, limit = episode_seed(seed, PARALLEL, 0), episode_seed(seed, LIMIT, 0)
        if injected_failure(FAILURES, parallel, 0) == injected_failure(FAILURES, parallel, 1) and injected_failure(FAILURES, limit, 0):
            return seed
    raise AssertionError("no such seed")


def transcript(record: dict) -> dict:
    calls = sorted((c["tool"], json.dumps(c["arguments"]), c["status"], json.dumps(c["result"]), c["error"], c["injected"]) for c in record["call_log"])
    return {key: record[key] for key in ("arena_id", "system_prompt", "messages", "tools", "final_answer", "turns", "stop_reason", "reward", "error")} | {"calls": calls}


async def test_eval_and_the_grpo_rollout_play_the_same_episode(gym, tokenizer, tmp_path):
    seed = run_seed()
    config = EvalConfig(arenas=f"{PARALLEL},{LIMIT}", gym=gym.url, failure_rate=FAILURES.rate, max_turns=3, seed=seed, out=tmp_path)
    policy = ChatPolicy(TokenChatModel(tokenizer, scripted_sampler(tokenizer)), max_turns=3, name="scripted")
    await run_eval(config, progress=False, policy=policy)
    lines = (tmp_path / "trajectories.jsonl").read_text().splitlines()
    evaluated = {r["arena_id"]: r for r in map(json.loads, lines)}
    assert all('"tokens"' not in line for line in lines)  # the token tape never reaches the JSONL

    prompts = [[{"role": "user", "content": "(the gym's question is played)", "arena_id": a}] for a in (PARALLEL, LIMIT)]
    with GymSession(gym.url) as session:
        rollout = MCPRollout(session, tokenizer, sampler=scripted_sampler(tokenizer), max_turns=3, failure_rate=FAILURES.rate, seed=seed)
        trained = {r.arena_id: r for r in rollout.play_records(prompts)}

    for arena_id in (PARALLEL, LIMIT):
        assert transcript(trained[arena_id].model_dump(mode="json")) == transcript(evaluated[arena_id]), arena_id
        assert trained[arena_id].tokens is not None and trained[arena_id].tokens.completion_ids
    parallel, limit = evaluated[PARALLEL], evaluated[LIMIT]
    assert parallel["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT} and parallel["system_prompt"] == DEFAULT_SYSTEM_PROMPT
    first = next(m for m in parallel["messages"] if m["role"] == "assistant")
    assert len(first["tool_calls"]) == 2 and parallel["stop_reason"] == "answer"
    # the turn limit: three model turns, the malformed call answered without reaching the gym, the last
    # turn's call executed and counted, no fourth turn and no final answer
    assert limit["stop_reason"] == "max_turns" and limit["turns"] == 3 and limit["final_answer"] is None
    assert "malformed call" in [m for m in limit["messages"] if m["role"] == "tool"][0]["content"]
    assert limit["messages"][-1]["role"] == "tool" and len(limit["call_log"]) == 2 and limit["reward"]["tool_calls"] == 2
    assert limit["call_log"][0]["injected"] is not None  # the seed's failure, in both runs alike


def test_sft_rows_start_with_the_prompt_their_episode_was_played_with(tmp_path):
    from trainer.train import sft_dataset

    user, answer = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    rows = [
        {"messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, user, answer], "tools": [], "system_prompt": DEFAULT_SYSTEM_PROMPT},
        {"messages": [user, answer], "tools": [], "system_prompt": "Be terse."},  # a record whose messages lack it
        {"messages": [user, answer], "tools": [], "system_prompt": None},  # played without one: trained without one
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    firsts = [r["messages"][0] for r in sft_dataset(tmp_path / "rows.jsonl")]
    assert firsts == [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "system", "content": "Be terse."}, user]


def test_sft_rows_are_read_like_every_resumable_jsonl(tmp_path):
    """The SFT reader is gym_server.jsonl's: a last line cut short by a kill is skipped, not a crash."""
    import pytest

    from trainer.train import sft_dataset

    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"type": "function"}]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row)[:25])
    dataset = sft_dataset(path)
    assert len(dataset) == 1 and json.loads(dataset[0]["tools"]) == [{"type": "function"}]
    with pytest.raises(ValueError, match="no such file"):
        sft_dataset(tmp_path / "missing.jsonl")
