"""Generation with TRL's colocated vLLM engine (`use_vllm=True, vllm_mode="colocate"`): the engine TRL builds in
the training process, on the training GPUs, and refreshes with the policy's weights before every
`rollout_func` call. The rollout's `BatchedSampler` hands it the pending turns of all live episodes as one
`LLM.generate` over token-id prompts, one `SamplingParams` per turn (its own budget). TRL starts the engine with
`logprobs_mode="processed_logprobs"`, so the log-probability vLLM reports for each sampled token is that of
the temperature-scaled distribution it was drawn from, as the transformers backend's is.

vllm is imported only when a run asks for colocation; without it the run stops before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clients.agent import ModelEndpointError
from clients.batching import BatchGenerate, Turn


def sampling_arguments(temperature: float, max_tokens: int) -> dict[str, Any]:
    """What every turn asks vLLM for: the whole distribution (no top-k/top-p/min-p, as GRPO's loss assumes),
    the sampled token's log-probability (`logprobs=0`), and the turn's own budget."""
    return {"n": 1, "temperature": temperature, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            "max_tokens": max_tokens, "logprobs": 0}  # fmt: skip


def vllm_llm_batch_generate(llm: Any, temperature: float, *, sampling_params: Callable[..., Any] | None = None) -> BatchGenerate:
    """A `BatchGenerate` over a `vllm.LLM` (TRL's `trainer.vllm_generation.llm`)."""
    if sampling_params is None:
        from vllm import SamplingParams as sampling_params  # noqa: N813

    def generate(contexts: list[list[int]], budgets: list[int]) -> list[Turn]:
        params = [sampling_params(**sampling_arguments(temperature, b)) for b in budgets]
        outputs = llm.generate([{"prompt_token_ids": c} for c in contexts], sampling_params=params, use_tqdm=False)
        return [_turn(out.outputs[0]) for out in outputs]

    return generate


def _turn(completion: Any) -> Turn:
    """The sampled ids and, at each position, the log-probability vLLM reported for the token it sampled."""
    ids = [int(t) for t in completion.token_ids]
    logprobs = completion.logprobs
    if logprobs is None or len(logprobs) != len(ids):
        raise ModelEndpointError(f"vLLM returned {0 if logprobs is None else len(logprobs)} logprobs for {len(ids)} tokens")
    values = []
    for token, position in zip(ids, logprobs):
        if token not in position:
            raise ModelEndpointError(f"vLLM's logprobs do not include the sampled token {token}")
        values.append(float(position[token].logprob))
    return ids, values
