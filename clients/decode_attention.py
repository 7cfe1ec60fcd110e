"""Decode-step attention for rows prefilled on CPU (`clients/hf_generation.py`), used only inside our own
`generate` calls.

At one query per row, PyTorch's CPU attention runs its flash kernel per (row, head) over a cache of ~800
positions and transformers builds each step's padding mask from the 2D mask with index arithmetic; at batch 8
with the tiny policy that was a quarter of a decode step, and it grew with the batch eight times faster than
the rest. Here the keys live transposed (`reserved_layer` writes them so): a step's scores are one batched
matrix product over contiguous rows, per key-value head with its query heads stacked, then a softmax and a
second product; the step's mask is built once per step from the 2D padding mask alone (with one query, the
last position, the causal part masks nothing). Anything else (a prompt's prefill, training, a key in the usual
layout) goes to transformers' SDPA path unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "astra_rows_decode"


def _decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    if length != 1 or key.stride(-2) != 1 or dropout or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = key.shape[1]
    scores = torch.matmul(query.reshape(batch, groups, heads // groups, dim), key.transpose(-1, -2))
    scores.mul_(dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # (batch, 1, 1, keys): every group, every head
        scores.masked_fill_(attention_mask.logical_not(), -torch.inf)
    elif attention_mask is not None:  # additive, as SDPA reads a float mask
        scores.add_(attention_mask)
    out = torch.matmul(torch.softmax(scores, -1), value)  # (batch, groups, heads per group, dim)
    return out.reshape(batch, 1, heads, dim), None


def _decode_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0, mask_function: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
    """With one query at the last position of a plainly causal mask, the padding alone matters: an additive mask
    built once per step (0 where a row attends, -inf at its padding; None without padding), which every layer adds
    to its scores, where a boolean one costs each layer a negation and a fill. SDPA reads an additive mask the same
    way. Any other shape is transformers' `sdpa_mask`."""
    import torch
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = causal_mask_function if mask_function is None else mask_function
    last = q_length == 1 and kv_offset == 0 and q_offset == kv_length - 1 and mask_function is causal_mask_function
    if last and (attention_mask is None or tuple(attention_mask.shape) == (batch_size, kv_length)):
        if attention_mask is None or bool(attention_mask.all()):
            return None
        padding = attention_mask.logical_not()[:, None, None, :]
        return torch.zeros(padding.shape, dtype=kwargs.get("dtype") or torch.float32, device=padding.device).masked_fill_(padding, -torch.inf)
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _decode_attention)
        AttentionMaskInterface.register(NAME, _decode_mask)


@contextmanager
def decoding_rows(model: Any) -> Iterator[None]:
    """Within it, `model` attends through `_decode_attention` (a model on transformers' SDPA only: another
    implementation is left alone). The switch is the model config's, so a forward another thread runs meanwhile
    takes it too, and stays right: any forward but a decode step over transposed keys goes to SDPA, and the
    decode step's mask (additive) is one SDPA reads as well, whichever side of a switch the mask and the
    attention fall on."""
    config = model.config
    if config._attn_implementation != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = {"": NAME}  # this config's alone: a sub-config (a vision tower's) keeps its own
    try:
        yield
    finally:
        config._attn_implementation = {"": "sdpa"}
