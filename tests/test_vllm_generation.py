"""GRPO turns sampled by a `trl vllm-serve` server: the request our rollout sends per turn, the tokens and
log-probabilities it keeps, the env_mask around the real gym's tool tokens, and loud failures. vllm itself
cannot be installed here, so the server is a scripted stand-in speaking the same HTTP (tests/fixtures)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gym_server.serve import AppThread
from tests.fixtures.scripted_vllm import scripted_vllm_app
from clients.gym_session import GymSession
from trainer.rollout import MCPRollout, gym_reward
from trainer.train import GRPORunConfig, grpo_arguments
from trainer.vllm_server import VLLMServerError, vllm_server_generate_fn

pytest.importorskip("torch")

CALL = '<tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call>'
PROMPT = [{"role": "user", "content": "How many seats are still free on flight AA100?", "arena_id": "airline-seats-aa100"}]


@pytest.fixture(scope="module")
def tiny():
    from trainer.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny")


def test_rollout_samples_every_turn_from_the_server_and_masks_tool_tokens(gym, tiny):
    model, tokenizer = tiny
    app = scripted_vllm_app(tokenizer, [CALL, "12"])
    with AppThread(app, 0) as server, GymSession(gym.url) as session:
        sampler = vllm_server_generate_fn(server.url, max_new_tokens=64, temperature=0.7)
        rollout = MCPRollout(session, tokenizer, model=model, sampler=sampler, max_turns=3, max_new_tokens=64, failure_rate=0.0)
        batch = rollout([PROMPT], SimpleNamespace(model=model, processing_class=tokenizer))
    first, second = app.state.requests
    assert first["model"] == "tiny-policy" and first["max_tokens"] == 64 and first["temperature"] == 0.7
    assert first["logprobs"] == 0 and first["return_token_ids"] and first["n"] == 1
    [prompt_ids], [completion], [logprobs], [mask] = batch["prompt_ids"], batch["completion_ids"], batch["logprobs"], batch["env_mask"]
    assert first["prompt"] == [prompt_ids]
    turn1 = tokenizer(CALL, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert completion[: len(turn1)] == turn1 and mask[: len(turn1)] == [1] * len(turn1)
    assert logprobs[:3] == [-0.25, -0.5, -0.75]  # the server's numbers, kept as sampled
    # the second turn is asked with everything so far: prompt, the model's call, the gym's tool response
    env = [t for t, m in zip(completion, mask) if m == 0]
    assert second["prompt"] == [prompt_ids + completion[: len(turn1) + len(env)]]
    assert '"seats_left": 12' in tokenizer.decode(env)
    assert all(lp == 0.0 for lp, m in zip(logprobs, mask) if m == 0)
    assert batch["gym_reward"] == [1.0] and batch["tool_calls"] == [1]
    assert batch["solved"] == [1]
    logged = {}
    assert gym_reward([PROMPT], [None], log_metric=logged.__setitem__, **{k: v for k, v in batch.items() if "_ids" not in k}) == [1.0]
    assert logged["gym/solved"] == 1.0 and logged["gym/tool_calls"] == 1.0  # through TRL's public log_metric hook


def test_a_dead_server_fails_loudly_instead_of_ending_the_turn(tiny):
    _, tokenizer = tiny
    generate = vllm_server_generate_fn("http://127.0.0.1:9", max_new_tokens=8, timeout_s=2)
    with pytest.raises(VLLMServerError, match="unreachable"):
        generate([1, 2, 3])


def test_the_served_model_is_asked_for_and_server_errors_surface(tiny):
    _, tokenizer = tiny
    app = scripted_vllm_app(tokenizer, ["hi"], model="other")
    with AppThread(app, 0) as server:
        generate = vllm_server_generate_fn(server.url, max_new_tokens=8)
        tokens, logprobs = generate([1, 2])  # the served model's id is asked for, then used
        assert tokens[-1] == tokenizer.eos_token_id and len(logprobs) == len(tokens)
        with pytest.raises(VLLMServerError, match="500"):
            generate([1, 2])  # script exhausted: the server's error surfaces with its status


def test_answers_without_one_logprob_per_token_are_errors():
    from trainer.vllm_server import _sampled_logprobs

    assert _sampled_logprobs({"content": [{"logprob": -0.1}, {"logprob": -2.0}]}, 2) == [-0.1, -2.0]
    with pytest.raises(VLLMServerError, match="no logprobs"):
        _sampled_logprobs(None, 2)
    with pytest.raises(VLLMServerError, match="1 logprobs for 2 tokens"):
        _sampled_logprobs({"token_logprobs": [-0.3]}, 2)


def test_grpo_arguments_turn_vllm_on_only_with_a_server_and_vllm_installed(tmp_path, monkeypatch):
    import importlib

    import_utils = importlib.import_module("trl.import_utils")
    plain = grpo_arguments(GRPORunConfig(model="tiny", out=tmp_path))
    assert "use_vllm" not in plain and plain["beta"] == 0.0 and not plain["mask_truncated_completions"]
    monkeypatch.setattr(import_utils, "is_vllm_available", lambda: False)
    with pytest.raises(ValueError, match="needs vllm installed"):
        grpo_arguments(GRPORunConfig(model="tiny", out=tmp_path, vllm_server="http://10.0.0.5:8000"))
    monkeypatch.setattr(import_utils, "is_vllm_available", lambda: True)
    served = grpo_arguments(GRPORunConfig(model="tiny", out=tmp_path, vllm_server="http://10.0.0.5:8000"))
    assert served["use_vllm"] and served["vllm_mode"] == "server" and served["vllm_server_base_url"] == "http://10.0.0.5:8000"


def test_colocate_mode_maps_to_trls_engine_and_is_refused_without_vllm(tmp_path, monkeypatch):
    import importlib

    import_utils = importlib.import_module("trl.import_utils")
    monkeypatch.setattr(import_utils, "is_vllm_available", lambda: False)
    with pytest.raises(ValueError, match="--vllm-colocate needs vllm"):
        grpo_arguments(GRPORunConfig(model="tiny", out=tmp_path, vllm_colocate=True))
    monkeypatch.setattr(import_utils, "is_vllm_available", lambda: True)
    colocated = grpo_arguments(GRPORunConfig(model="tiny", out=tmp_path, vllm_colocate=True))
    assert colocated["use_vllm"] and colocated["vllm_mode"] == "colocate" and "vllm_server_base_url" not in colocated
    with pytest.raises(ValueError, match="one of"):
        grpo_arguments(GRPORunConfig(model="tiny", out=tmp_path, vllm_colocate=True, vllm_server="http://10.0.0.5:8000"))


class FakeLLM:
    """`vllm.LLM.generate`'s shape: one output per prompt, each with the sampled ids and, per position, a dict of
    token -> Logprob holding the sampled token."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append((prompts, sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            ids = [prompt["prompt_token_ids"][-1] + k for k in range(params["max_tokens"])]
            logprobs = [{t: SimpleNamespace(logprob=-0.1 * (k + 1)), 999: SimpleNamespace(logprob=-9.0)} for k, t in enumerate(ids)]
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs)]))
        return outputs


def test_the_colocated_engine_samples_a_batch_of_turns_with_their_own_budgets_and_sampled_logprobs():
    from trainer.vllm_colocate import vllm_llm_batch_generate

    llm = FakeLLM()
    generate = vllm_llm_batch_generate(llm, 0.7, sampling_params=lambda **kw: kw)
    turns = generate([[1, 2], [5]], [2, 3])
    [(prompts, params)] = llm.calls
    assert prompts == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [5]}]
    assert [p["max_tokens"] for p in params] == [2, 3] and all(p["temperature"] == 0.7 and p["logprobs"] == 0 for p in params)
    assert all(p["top_k"] == 0 and p["top_p"] == 1.0 and p["min_p"] == 0.0 for p in params)  # the whole distribution
    assert turns == [([2, 3], [-0.1, -0.2]), ([5, 6, 7], [-0.1, -0.2, -0.30000000000000004])]
    missing = SimpleNamespace(generate=lambda prompts, sampling_params, use_tqdm: [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[4], logprobs=None)])])
    from clients.agent import ModelEndpointError

    with pytest.raises(ModelEndpointError, match="0 logprobs for 1 tokens"):
        vllm_llm_batch_generate(missing, 1.0, sampling_params=lambda **kw: kw)([[1]], [1])


def test_the_rollout_takes_its_sampler_from_the_trainer_on_the_first_call(gym, tiny):
    from clients.batching import BatchedSampler
    from trainer.vllm_colocate import vllm_llm_batch_generate

    model, tokenizer = tiny
    llm = FakeLLM()
    trainer = SimpleNamespace(vllm_generation=SimpleNamespace(llm=llm))
    with GymSession(gym.url) as session:
        rollout = MCPRollout(session, tokenizer, model=model, max_turns=1, max_new_tokens=3, failure_rate=0.0,
                             sampler_from_trainer=lambda t: BatchedSampler(vllm_llm_batch_generate(t.vllm_generation.llm, 1.0, sampling_params=lambda **kw: kw)))  # fmt: skip
        batch = rollout([PROMPT, PROMPT], trainer)
    assert len(llm.calls) == 1 and len(llm.calls[0][0]) == 2  # both episodes' turns in one engine call
    assert all(len(c) == 3 and lp[0] == -0.1 for c, lp in zip(batch["completion_ids"], batch["logprobs"]))
    assert rollout.sampler_from_trainer is None  # built once, kept for the run
