"""The decode-step attention of rows prefilled on CPU (clients/decode_attention.py): it answers as transformers'
SDPA path does, it runs for every decode step of our generate and for nothing else, and the model leaves
`generate` on the attention it came with."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    from trainer.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny")
    return model.eval(), tokenizer


@pytest.mark.parametrize("heads, groups, dim", [(8, 2, 16), (4, 4, 8), (6, 1, 32)])
@pytest.mark.parametrize("padded", [True, False])
def test_one_query_per_row_over_transposed_keys_answers_as_sdpa(padded, heads, groups, dim):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from clients.decode_attention import _decode_attention, _decode_mask
    from clients.hf_generation import reserved_layer

    torch.manual_seed(0)
    batch, length = 3, 37
    module = SimpleNamespace(num_key_value_groups=heads // groups, is_causal=True, training=False)
    keys, values = torch.randn(batch, groups, length - 1, dim), torch.randn(batch, groups, length - 1, dim)
    layer = reserved_layer(keys, values, capacity=length + 4)
    key, value = layer.update(torch.randn(batch, groups, 1, dim), torch.randn(batch, groups, 1, dim))
    assert key.stride(-2) == 1  # the layout the fast path is for
    query = torch.randn(batch, heads, 1, dim)
    padding = torch.ones(batch, length, dtype=torch.bool)
    if padded:
        padding[0, :5], padding[2, :30] = False, False
    mask = _decode_mask(batch, 1, length, q_offset=length - 1, attention_mask=padding)
    assert (mask is None) == (not padded)  # no padding, nothing to add
    got, _ = _decode_attention(module, query, key, value, mask, scaling=0.3)
    want, _ = sdpa_attention_forward(module, query, key.contiguous(), value, padding[:, None, None, :], scaling=0.3)
    assert got.shape == want.shape == (batch, 1, heads, dim)
    assert torch.allclose(got, want, atol=1e-5)
    # SDPA reads the same mask the same way (a forward on the other side of a switch), and so do we a boolean one
    assert torch.allclose(sdpa_attention_forward(module, query, key.contiguous(), value, mask, scaling=0.3)[0], want, atol=1e-5)
    assert torch.allclose(_decode_attention(module, query, key, value, padding[:, None, None, :], scaling=0.3)[0], want, atol=1e-5)
    if padded:  # the padded keys count for nothing: changing them changes no answer
        layer._keys_t[0, :, :, :5] = 1e4
        assert torch.allclose(_decode_attention(module, query, key, value, mask, scaling=0.3)[0], got, atol=1e-5)


def test_every_other_shape_goes_to_transformers_own_mask_and_attention():
    from transformers.masking_utils import and_masks, causal_mask_function, sdpa_mask

    from clients.decode_attention import _decode_attention, _decode_mask

    padding = torch.tensor([[False, True, True, True, True], [True] * 5])
    for kwargs in ({"q_length": 5, "q_offset": 0}, {"q_length": 1, "q_offset": 2}, {"q_length": 1, "q_offset": 4, "kv_offset": 1},
                   {"q_length": 1, "q_offset": 4, "mask_function": and_masks(causal_mask_function, lambda b, h, q, k: k > 1)}):  # fmt: skip
        kwargs.setdefault("mask_function", causal_mask_function)
        assert torch.equal(_decode_mask(2, kv_length=5, attention_mask=padding, **kwargs), sdpa_mask(2, kv_length=5, attention_mask=padding, **kwargs))
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    query, key, value = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    with mock.patch("transformers.integrations.sdpa_attention.sdpa_attention_forward", return_value=("sdpa", None)) as sdpa:
        assert _decode_attention(module, query, key, value, None)[0] == "sdpa"  # a prompt's forward
        assert _decode_attention(module, query[:, :, :1], key, value, None)[0] == "sdpa"  # keys in the usual layout
    assert sdpa.call_count == 2


def test_generate_decodes_through_it_and_gives_the_model_back_as_it_was(tiny):
    from clients.hf_generation import hf_batch_generate

    model, tokenizer = tiny
    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("How many seats are free?", "hi there", "order O-1002")]
    generate = hf_batch_generate(model, tokenizer, 1.0, prefill="rows")
    from transformers import AttentionInterface

    calls = []
    real = AttentionInterface._global_mapping["sdpa"]

    def counted(module, query, *args, **kwargs):
        calls.append(query.shape[2])  # the forward's positions
        return real(module, query, *args, **kwargs)

    with mock.patch.dict(AttentionInterface._global_mapping, {"sdpa": counted}):
        torch.manual_seed(0)
        turns = generate(contexts, [6, 6, 6])
    assert calls and all(n > 1 for n in calls)  # the prompts' prefills alone: no decode step went through SDPA
    assert sum(len(ids) for ids, _ in turns) > len(contexts)  # decode steps ran
    assert model.config._attn_implementation == "sdpa"

    def broken(*args, **kwargs):
        raise RuntimeError("stop")

    with mock.patch("transformers.generation.utils.GenerationMixin._sample", broken), pytest.raises(RuntimeError):
        generate(contexts, [6, 6, 6])
    assert model.config._attn_implementation == "sdpa"  # restored on the way out of a failure too


def test_a_model_on_another_attention_is_left_alone():
    from clients.decode_attention import decoding_rows

    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager"))
    with decoding_rows(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"


def test_only_the_model_s_own_config_switches_not_its_sub_configs():
    from transformers import PretrainedConfig

    from clients.decode_attention import NAME, decoding_rows

    class Tower(PretrainedConfig):
        model_type = "tower"

    class Composite(PretrainedConfig):
        model_type = "composite"
        sub_configs = {"vision_config": Tower}

    config = Composite(vision_config=Tower())
    config._attn_implementation, config.vision_config._attn_implementation = "sdpa", "eager"
    with decoding_rows(SimpleNamespace(config=config)):
        assert (config._attn_implementation, config.vision_config._attn_implementation) == (NAME, "eager")
    assert (config._attn_implementation, config.vision_config._attn_implementation) == ("sdpa", "eager")


def test_another_architecture_decodes_its_rows_as_alone_and_reports_its_sampling_distribution():
    """A Llama-shaped model (as many key-value heads as query heads, its own head size) through the same path:
    batched rows get what each gets alone, and sampled log-probabilities are the model's own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from clients.hf_generation import hf_batch_generate
    from trainer.tiny import train_tokenizer

    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    assert model.config._attn_implementation == "sdpa"
    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("How many seats are still free?", "hi", "Which drug is RX12?")]
    greedy = hf_batch_generate(model, tokenizer, 0.0, prefill="rows")
    together = greedy(contexts, [6, 6, 6])
    for context, (ids, logprobs) in zip(contexts, together):
        ids_alone, logprobs_alone = hf_batch_generate(model, tokenizer, 0.0, prefill="padded")([context], [6])[0]
        assert ids == ids_alone and torch.allclose(torch.tensor(logprobs), torch.tensor(logprobs_alone), atol=1e-5)
    torch.manual_seed(1)
    for context, (ids, logprobs) in zip(contexts, hf_batch_generate(model, tokenizer, 0.8, prefill="rows")(contexts, [6, 6, 6])):
        with torch.no_grad():
            logits = model(torch.tensor([context + ids])).logits[0, len(context) - 1 : -1].float() / 0.8
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-4)
    assert model.config._attn_implementation == "sdpa"
