"""The transformers backend of `BatchedSampler`: one left-padded `generate` over a batch of turns, each row
stopping at its own EOS or token budget, with the log-probability of every sampled token under the
distribution it was drawn from.

That distribution is the model's logits after generation's processors and the temperature (top-k and top-p
are off, as GRPO's loss assumes); greedy decoding (temperature 0) reports the plain log-softmax. A logits
processor that runs last draws each row's token itself (`draw_rows`, by the inverse of the cumulative
distribution) and records its log-probability, then hands generation a score row on which only that token
can win, so generation's greedy pick takes it: `torch.multinomial` draws an exponential variate per vocabulary
entry, about 0.2 ms of a 3 ms decode step at batch 8 on CPU, where the cumulative sum and one uniform variate
per row take 0.03 ms. Only the drawn tokens' log-probabilities are kept, one small tensor per step.

On CPU the prompts are prefilled one at a time (`prefill="rows"`; identical prompts, such as a GRPO group's first
turns, once) and only the decoding is batched: a left-padded prefill needs an attention mask, and with one
PyTorch's CPU attention takes its reference path, which builds every row's whole score matrix: for 8 prompts of
~800 tokens it took about twice the attention time of 8 prefills alone (docs/benchmarks.md, "Rollout
generation"). The prefilled cache reserves room for the turn, so decoding appends each token in place instead of
copying the cache (`reserved_layer`). Decode steps over that cache attend through `clients/decode_attention.py`
(keys stored transposed, one batched product per step instead of a kernel per row and head). On a GPU the padded
prefill is one efficient kernel, so `auto` keeps generation's own path there.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

from clients.batching import BatchGenerate, Turn
from clients.decode_attention import decoding_rows

Prefill = Literal["auto", "rows", "padded"]
MIN_SHARED = 16
"""Shared leading tokens below which a prompt is prefilled whole (a cache of a few tokens saves nothing)."""


def rows_prefill_fits(model: Any) -> bool:
    """Whether a cache prefilled row by row can stand in for the padded prefill: every layer attends to the whole
    context (sliding-window and hybrid layers keep caches of other shapes), and the model can skip the logits of
    all but a prompt's last position. Any other model keeps the padded prefill."""
    import inspect

    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        full = all(t == "full_attention" for t in layer_types)
    else:
        full = getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", None) is False
    return full and "logits_to_keep" in inspect.signature(model.forward).parameters


def reserved_layer(keys: Any, values: Any, capacity: int) -> Any:
    """A `DynamicLayer` holding `keys`/`values` in buffers with room for `capacity` positions: each decoding step
    writes its token in place and attends to a view, where `DynamicLayer` copies the whole cache (`torch.cat`) to
    append one token, a copy that grows with batch and context (about a tenth of a decode step at batch 8 on CPU).
    The keys are stored transposed (their view has the usual shape), so a decode step's scores are products over
    contiguous rows (`clients/decode_attention.py`). Past `capacity`, or after any reshaping generation asks for,
    it appends by copying as `DynamicLayer` does."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            batch, heads, n, dim = keys.shape
            self._keys_t = keys.new_zeros(batch, heads, dim, max(capacity, n))
            self._values = values.new_zeros(batch, heads, max(capacity, n), values.shape[-1])
            self._keys_t[..., :n], self._values[:, :, :n] = keys.transpose(-1, -2), values
            self.device, self.is_initialized = keys.device, True
            self._fill(n)

        def _fill(self, n: int) -> None:
            self._n = n
            self.keys, self.values = self._keys_t[..., :n].transpose(-1, -2), self._values[:, :, :n]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n = self._n + key_states.shape[-2]
            if n > self._values.shape[-2]:
                self._keys_t = torch.cat([self._keys_t[..., : self._n], key_states.transpose(-1, -2)], dim=-1)
                self._values = torch.cat([self.values, value_states], dim=-2)
            else:
                self._keys_t[..., self._n : n], self._values[:, :, self._n : n] = key_states.transpose(-1, -2), value_states
            self._fill(n)
            return self.keys, self.values

        def reset(self) -> None:
            self._fill(0)

        def _after(self, method: str, *args: Any) -> None:
            getattr(super(), method)(*args)  # reshaped views become the buffers; the next append copies
            if self.keys is not None:
                self._keys_t, self._values = self.keys.transpose(-1, -2), self.values
                self._fill(self.keys.shape[-2])

        def crop(self, tokens_to_remove: int) -> None:
            self._after("crop", tokens_to_remove)

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._after("batch_repeat_interleave", repeats)

        def batch_select_indices(self, indices: Any) -> None:
            self._after("batch_select_indices", indices)

        def reorder_cache(self, beam_idx: Any) -> None:
            self._after("reorder_cache", beam_idx)

    return ReservedLayer()


def _shared_head(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_layers(model: Any, prefix: tuple[int, ...], head: list[tuple[Any, Any]] | None = None, shared: int = 0) -> list[tuple[Any, Any]]:
    """Every layer's keys and values for `prefix`. With `head` (another prefix's layers) and the number of leading
    tokens the two share, only the rest runs: with causal attention a position's keys and values depend on the
    tokens up to it alone, so the shared ones are the same (to float rounding: about 1e-6 here)."""
    import torch
    from transformers import DynamicCache

    if head is None or shared <= 0:
        out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in out.cache.layers]
    if shared >= len(prefix):
        return [(k[:, :, : len(prefix)], v[:, :, : len(prefix)]) for k, v in head]
    cache = DynamicCache()
    for i, (keys, values) in enumerate(head):
        cache.update(keys[:, :, :shared], values[:, :, :shared], i)  # appended as copies: `head` stays as it was
    out = model(input_ids=torch.tensor([prefix[shared:]], device=model.device), cache=cache, use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in out.cache.layers]


def prefilled_cache(model: Any, contexts: list[list[int]], width: int, room: int, share: bool = True) -> Any:
    """A left-padded `DynamicCache` holding every context but its last token, each prefilled alone (identical
    contexts once), with `room` positions reserved for the turn (`reserved_layer`). Padding slots hold zeros,
    which the attention mask hides, as it hid the pad tokens' keys.

    Contexts that begin alike (the system prompt; the tools of arenas of one domain) share that beginning's
    forward pass: taken in sorted order, each context's longest shared beginning with any earlier one is with the
    one just before it, and only the rest of it runs (`prefix_layers`). For 8 episodes on 8 arenas that is a
    quarter of the prompt tokens (docs/benchmarks.md)."""
    import torch
    from transformers import DynamicCache

    prefixes = [tuple(context[:-1]) for context in contexts]
    done: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
    previous: tuple[int, ...] = ()
    for prefix in sorted({p for p in prefixes if p}):
        shared = _shared_head(prefix, previous)
        done[prefix] = prefix_layers(model, prefix, done.get(previous), shared if share and shared >= MIN_SHARED else 0)
        previous = prefix
    like = next(iter(done.values()))
    cache = DynamicCache()
    layers = []
    for i in range(len(like)):
        keys, values = [], []
        for prefix in prefixes:
            k, v = done[prefix][i] if prefix else (like[i][0][:, :, :0], like[i][1][:, :, :0])
            pad = width - 1 - k.shape[2]
            keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        layers.append(reserved_layer(torch.cat(keys), torch.cat(values), width - 1 + room))
    cache.layers = layers
    return cache


def draw_rows(logprobs: Any) -> Any:
    """One token per row of `logprobs` (batch, vocab), row i drawn with probability exp(logprobs[i]): a uniform
    variate scaled to the row's total mass, located in its cumulative sum. Tokens of zero probability cannot be
    drawn (their cumulative sum is flat, and the search takes the first position past the variate); the total
    is the cumulative sum's own last entry, so float rounding in the sum never draws past the row's last token of
    nonzero probability."""
    import torch

    cdf = logprobs.exp().cumsum(-1)
    total = cdf[:, -1:].contiguous()
    point = torch.rand(total.shape, dtype=cdf.dtype, device=cdf.device) * total
    last = torch.searchsorted(cdf, total)  # the last token with mass: a variate rounded up to the total lands there
    return torch.minimum(torch.searchsorted(cdf, point, right=True), last)


def hf_batch_generate(
    model: Any, tokenizer: Any, temperature: float = 0.0, *, with_logprobs: bool = True, prefill: Prefill = "auto", share_prefixes: bool = True
) -> BatchGenerate:
    import torch

    if prefill not in ("auto", "rows", "padded"):
        raise ValueError(f"prefill must be auto, rows or padded, not {prefill!r}")
    rows = prefill == "rows" or (prefill == "auto" and model.device.type == "cpu")
    rows = rows and rows_prefill_fits(model)
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TemperatureLogitsWarper

    sampling = temperature > 0
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    class SampledLogprobs(LogitsProcessor):
        """Runs last: draws each row's token (greedy: the argmax) from the final scores, keeps its log-softmax,
        and returns scores on which only that token is finite, so generation's greedy pick is the drawn token."""

        def __init__(self) -> None:
            self.steps: list[Any] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            logprobs = torch.log_softmax(scores.float(), -1)
            drawn = draw_rows(logprobs) if sampling else scores.argmax(-1, keepdim=True)
            if with_logprobs:
                self.steps.append(logprobs.gather(-1, drawn)[:, 0])
            return torch.full_like(scores, -torch.inf).scatter_(-1, drawn, 0.0)

        def finish(self, new: int) -> Any:
            """(batch, new) log-probabilities (generation may run a step past the end and undo it)."""
            return torch.stack(self.steps[:new], dim=1)

    class Budgets(StoppingCriteria):
        """Row i is done after budgets[i] new tokens (EOS ends rows on generation's own criterion)."""

        def __init__(self, budgets: list[int], width: int) -> None:
            self.budgets = torch.tensor(budgets, device=model.device)
            self.width = width

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return (input_ids.shape[1] - self.width) >= self.budgets

    def generate(contexts: list[list[int]], budgets: list[int]) -> list[Turn]:
        width = max(len(c) for c in contexts)
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=model.device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=model.device)
        recorder = SampledLogprobs()
        processors = LogitsProcessorList([TemperatureLogitsWarper(temperature)] if sampling and temperature != 1.0 else [])
        if sampling or with_logprobs:  # greedy without scores: generation's own argmax, nothing computed for us
            processors.append(recorder)
        with torch.no_grad():
            # Rows prefilled alone into a cache with room for the turn; generate then runs only the last tokens.
            cache = prefilled_cache(model, contexts, width, max(budgets), share_prefixes) if rows and width > 1 else None
            with decoding_rows(model) if cache is not None else nullcontext():
                sequences = model.generate(
                    # greedy: generation takes the token `recorder` drew; it adds no warper of its own
                    ids, attention_mask=mask, cache=cache, max_new_tokens=max(budgets), do_sample=False,
                    temperature=None, top_k=None, top_p=None,
                    min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, renormalize_logits=False,
                    logits_processor=processors, stopping_criteria=StoppingCriteriaList([Budgets(budgets, width)]),
                    pad_token_id=pad, eos_token_id=eos, return_dict_in_generate=False,
                )  # fmt: skip
            new = sequences.shape[1] - width
            logprobs = recorder.finish(new).tolist() if with_logprobs and new else None
        turns: list[Turn] = []
        for row, budget in enumerate(budgets):
            tokens = sequences[row, width : width + budget].tolist()
            end = tokens.index(eos) + 1 if eos in tokens else len(tokens)
            turns.append((tokens[:end], logprobs[row][:end] if logprobs is not None else []))
        return turns

    return generate
