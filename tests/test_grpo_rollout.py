"""GRPO rollouts through the real gym over MCP: the env_mask keeps tool tokens out of the loss, and TRL's
GRPOTrainer runs steps with the tiny model on CPU."""

from __future__ import annotations

import pytest

from clients.agent import DEFAULT_SYSTEM_PROMPT
from clients.gym_session import GymSession
from trainer.rollout import ABFSettings, MCPRollout, gym_reward

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    from trainer.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny")


def scripted(tokenizer, turns: list[str]):
    """A sampler that 'generates' fixed text, one turn per call, ending each with EOS."""
    queue = list(turns)

    def generate(ids, max_tokens):
        new = tokenizer(queue.pop(0), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return new, [-0.5] * len(new)

    return generate


def test_env_mask_marks_exactly_the_tool_tokens(gym, tiny):
    _, tokenizer = tiny
    prompt = [{"role": "user", "content": "How many seats are still free on flight AA100?", "arena_id": "airline-seats-aa100"}]
    call = '<tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call>'
    with GymSession(gym.url) as session:
        rollout = MCPRollout(session, tokenizer, sampler=scripted(tokenizer, [call, "12"]), max_turns=3, failure_rate=0.0)
        [episode] = rollout.play([prompt])
    ids, mask = episode.completion_ids, episode.env_mask
    assert len(ids) == len(mask) == len(episode.logprobs)
    model_text = tokenizer.decode([t for t, m in zip(ids, mask) if m == 1])
    env_text = tokenizer.decode([t for t, m in zip(ids, mask) if m == 0])
    assert model_text == call + "<|im_end|>12<|im_end|>"
    assert env_text.startswith("\n<|im_start|>user\n<tool_response>") and '"seats_left": 12' in env_text
    assert env_text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert all(lp == 0.0 for lp, m in zip(episode.logprobs, mask) if m == 0)
    rendered_prompt = tokenizer.decode(episode.prompt_ids)
    assert rendered_prompt.endswith("<|im_start|>assistant\n") and "get_flight" in rendered_prompt
    assert rendered_prompt.startswith("<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT)  # eval's system prompt
    assert episode.reward["reward"] == 1.0 and episode.reward["tool_calls"] == 1 and not episode.truncated


def test_truncated_turns_end_the_episode(gym, tiny):
    _, tokenizer = tiny

    def endless(ids, max_tokens):
        new = tokenizer("<tool_call>{", add_special_tokens=False)["input_ids"]
        return new, [-1.0] * len(new)

    prompt = [{"role": "user", "content": "q", "arena_id": "airline-seats-aa100"}]
    with GymSession(gym.url) as session:
        [episode] = MCPRollout(session, tokenizer, sampler=endless, max_turns=3).play([prompt])
    assert episode.truncated and episode.turns == 1 and all(episode.env_mask) and episode.reward["tool_calls"] == 0


def test_grpo_two_steps_on_cpu_through_the_gym(gym, tiny, tmp_path, monkeypatch):
    import asyncio

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import trainer.rollout as rollout_module

    played_on = set()  # (event loop, HTTP pool) of every episode: one of each for the whole run

    async def run_episode(gym_client, *args, **kwargs):
        played_on.add((id(asyncio.get_running_loop()), id(gym_client.http)))
        return await real_run_episode(gym_client, *args, **kwargs)

    real_run_episode = rollout_module.run_episode
    monkeypatch.setattr(rollout_module, "run_episode", run_episode)

    model, tokenizer = tiny
    arenas = ["airline-seats-aa100", "clinic-refills-rx12", "retail-status-o1002", "clinic-specialties-d01-d04"]
    questions = {
        "airline-seats-aa100": "How many seats are still free on flight AA100?",
        "clinic-refills-rx12": "How many refills are left on prescription RX12?",
        "retail-status-o1002": "What is the status of order O-1002?",
        "clinic-specialties-d01-d04": "What are the specialties of doctors D01 and D04?",
    }
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": questions[a], "arena_id": a}]} for a in arenas])
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2, beta=0.0,
        max_completion_length=256, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, learning_rate=1e-4,
    )  # fmt: skip
    with GymSession(gym.url) as session:
        rollout = MCPRollout(session, tokenizer, model=model, max_turns=2, max_new_tokens=24,
                             abf=ABFSettings(list(dataset["prompt"]), group_size=2, max_extra_rounds=1))  # fmt: skip
        trainer = GRPOTrainer(model=model, reward_funcs=gym_reward, args=args, train_dataset=dataset, processing_class=tokenizer, rollout_func=rollout)
        result = trainer.train()
    assert result.global_step == 2 and rollout.episodes_played >= 8 and len(played_on) == 1
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and all(0.0 <= h["reward"] <= 1.0 for h in logged)
    assert all("abf/groups_dropped" in h and "gym/recall" in h for h in logged) and rollout.filler.stats.batches == 2


def test_transformers_sampling_logprobs_are_those_of_the_sampling_distribution():
    from clients.local_model import hf_sampler
    from trainer.tiny import load_model_and_tokenizer

    # a model of its own: the module's has been trained by then, and accelerate leaves its forward under bf16
    # autocast, where two paths to the same logits may differ by a bf16 rounding (about 1e-3 here)
    model, tokenizer = load_model_and_tokenizer("tiny")
    model.eval()
    ids = tokenizer("How many seats are still free?", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    new, logprobs = hf_sampler(model, tokenizer, temperature=0.7)(ids, 6)
    assert 0 < len(new) == len(logprobs) <= 6
    with torch.no_grad():
        logits = model(torch.tensor([ids + new])).logits[0, len(ids) - 1 : -1].float() / 0.7
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(new)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-4)
    greedy, none = hf_sampler(model, tokenizer, with_logprobs=False)(ids, 4)
    assert none == [] and len(greedy) > 0  # evaluation pays for no scores
