"""Generation through a `trl vllm-serve` server: the GRPO rollout's turns sampled by vLLM instead of transformers.

TRL owns the weights: with `use_vllm=True, vllm_mode="server"` it pushes the policy's new weights to the server
before every step's `rollout_func` call, so every turn sampled here is on-policy. What this module adds is the
per-turn request our multi-turn episodes need: one token-id prompt in, the sampled token ids and their
log-probabilities out, over the same OpenAI-compatible `/v1/completions` request TRL's own `VLLMClient.generate`
sends. Episodes run concurrently (each turn in a worker thread), and vLLM batches their requests itself.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx2

from clients.agent import ModelEndpointError
from clients.local_model import Sampler


class VLLMServerError(ModelEndpointError):
    """The vLLM server cannot be reached or answered something that is not a completion: the run stops."""


def vllm_server_generate_fn(base_url: str, max_new_tokens: int, temperature: float = 1.0, *, timeout_s: float = 600.0) -> Sampler:
    """A `Sampler` backed by the server at `base_url` (`max_new_tokens` caps every turn's budget); fails
    loudly (never an empty turn) when it is down."""
    base = base_url.rstrip("/")
    http = httpx2.Client(timeout=timeout_s, limits=httpx2.Limits(max_connections=64, max_keepalive_connections=64))

    @functools.cache  # asked once, on the first turn; a failed ask is not cached and is asked again
    def served_model() -> str:
        return str(_request(http, "GET", f"{base}/v1/models")["data"][0]["id"])

    def generate(ids: list[int], max_tokens: int | None = None) -> tuple[list[int], list[float]]:
        budget = max_new_tokens if max_tokens is None else min(max_tokens, max_new_tokens)
        payload = {
            "model": served_model(), "prompt": [ids], "n": 1, "max_tokens": budget, "temperature": temperature,
            "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "logprobs": 0,
            "return_token_ids": True, "return_tokens_as_token_ids": True,
        }  # fmt: skip
        choice = _request(http, "POST", f"{base}/v1/completions", json=payload)["choices"][0]
        tokens = [int(t) for t in choice["token_ids"]]
        return tokens, _sampled_logprobs(choice.get("logprobs"), len(tokens))

    return generate


def _request(http: httpx2.Client, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = http.request(method, url, **kwargs)
    except httpx2.HTTPError as exc:
        raise VLLMServerError(f"the vLLM server at {url} is unreachable: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise VLLMServerError(f"the vLLM server answered {response.status_code} to {url}: {response.text[:500]}")
    try:
        return response.json()
    except ValueError as exc:
        raise VLLMServerError(f"the vLLM server sent something that is not JSON from {url}") from exc


def _sampled_logprobs(logprobs: dict[str, Any] | None, n: int) -> list[float]:
    """The sampled token's log-probability at each position, from either shape vLLM answers in (completions'
    `token_logprobs`, or chat-style `content` entries); GRPO's importance ratio needs one per token."""
    if logprobs is None:
        raise VLLMServerError("the vLLM server returned no logprobs (the request asked for them)")
    if "token_logprobs" in logprobs:
        values = logprobs["token_logprobs"]
    else:
        values = [entry["logprob"] for entry in logprobs.get("content", [])]
    if len(values) != n:
        raise VLLMServerError(f"the vLLM server returned {len(values)} logprobs for {n} tokens")
    return [float(v) if v is not None else 0.0 for v in values]
