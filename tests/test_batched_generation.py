"""Batched generation across a step's episodes: one left-padded `generate` gives each turn what it would get
alone (greedy tokens, sampling log-probabilities), rows stop at their own EOS and budget, and the batcher
gathers the turns of concurrent episodes into shared batches through the real gym."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from clients.batching import BatchedSampler
from clients.gym_session import GymSession
from clients.local_model import hf_sampler
from trainer.rollout import MCPRollout

torch = pytest.importorskip("torch")

TEXTS = ["How many seats are still free?", "What is the status of order O-1002?", "hi", "Which drug is prescription RX12 for? Tell me"]


@pytest.fixture(scope="module")
def tiny():
    from trainer.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny")
    return model.eval(), tokenizer


def contexts(tokenizer):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("prefill", ["rows", "padded"])
def test_a_padded_batch_gives_each_row_what_it_gets_alone(tiny, prefill):
    from clients.hf_generation import hf_batch_generate

    model, tokenizer = tiny
    generate = hf_batch_generate(model, tokenizer, 0.0, prefill=prefill)
    budgets = [5, 9, 3, 7]
    alone = [generate([c], [b])[0] for c, b in zip(contexts(tokenizer), budgets)]
    together = generate(contexts(tokenizer), budgets)
    assert [len(t) for t, _ in together] == budgets  # each row its own budget, not the longest one's
    for (ids_a, lp_a), (ids_b, lp_b) in zip(alone, together):
        assert ids_a == ids_b
        assert torch.allclose(torch.tensor(lp_a), torch.tensor(lp_b), atol=1e-5)


def test_identical_prompts_are_prefilled_once_and_decoded_as_rows_of_one_batch(tiny):
    """A GRPO group's first turns share their prompt: CPU prefill runs once per distinct prompt (one forward
    over many tokens each), then one batched decode; the rows still get what each gets alone."""
    from clients.hf_generation import hf_batch_generate

    model, tokenizer = tiny
    group = [contexts(tokenizer)[0]] * 3 + [contexts(tokenizer)[1]] * 2
    widths: list[int] = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        together = hf_batch_generate(model, tokenizer, 0.0, prefill="rows")(group, [4] * 5)
    finally:
        hook.remove()
    assert sorted(w for w in widths if w > 1) == sorted({len(c) - 1 for c in group})  # two prompts, two prefills
    assert len([w for w in widths if w == 1]) == 4  # then one forward of the whole batch per new token
    alone = hf_batch_generate(model, tokenizer, 0.0, prefill="padded")
    for (ids, logprobs), context in zip(together, group):
        ids_alone, logprobs_alone = alone([context], [4])[0]
        assert ids == ids_alone
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(logprobs_alone), atol=1e-5)
    with pytest.raises(ValueError, match="prefill"):
        hf_batch_generate(model, tokenizer, 0.0, prefill="sideways")  # type: ignore[arg-type]


def test_prompts_that_begin_alike_share_that_beginnings_prefill_and_decode_as_alone(tiny):
    """Episodes on arenas of one domain open with the same system prompt and tools: only the first prompt is
    prefilled whole, each other one from where it parts from the one before it (sorted), and every row still gets
    what it gets alone."""
    from clients.hf_generation import MIN_SHARED, hf_batch_generate

    model, tokenizer = tiny
    head = tokenizer("You are a careful assistant. Use the tools to answer; answer with the final value. " * 3, add_special_tokens=False)["input_ids"]
    assert len(head) > MIN_SHARED
    group = [head + c for c in contexts(tokenizer)] + [contexts(tokenizer)[2]]  # and one that shares nothing
    widths: list[int] = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        together = hf_batch_generate(model, tokenizer, 0.0, prefill="rows")(group, [5] * len(group))
    finally:
        hook.remove()
    prefills = sorted(w for w in widths if w > 1)
    texts = contexts(tokenizer)
    assert len(texts[2]) == 1  # "hi": head + "hi" is prefilled as the head alone, and "hi" alone needs no prefill
    assert prefills == sorted([len(head)] + [len(texts[i]) - 1 for i in (0, 1, 3)])  # the head ran once; the others past it
    alone = hf_batch_generate(model, tokenizer, 0.0, prefill="padded")
    for (ids, logprobs), context in zip(together, group):
        ids_alone, logprobs_alone = alone([context], [5])[0]
        assert ids == ids_alone
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(logprobs_alone), atol=1e-4)
    widths.clear()
    hook = model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        hf_batch_generate(model, tokenizer, 0.0, prefill="rows", share_prefixes=False)(group, [1] * len(group))
    finally:
        hook.remove()
    assert sorted(w for w in widths if w > 1) == sorted(len(c) - 1 for c in group[:4])  # switched off: each one whole


def test_a_reserved_cache_layer_appends_in_place_and_answers_as_a_growing_one():
    from transformers.cache_utils import DynamicLayer

    from clients.hf_generation import reserved_layer

    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    reserved, plain = reserved_layer(keys, values, capacity=7), DynamicLayer()
    plain.update(keys, values)
    buffer = reserved.keys  # held, so its memory cannot be reused by a later copy and pass for it
    for step in range(4):  # two appends fit, the third and fourth copy as DynamicLayer does
        k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        got, want = reserved.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert reserved.get_seq_length() == plain.get_seq_length() == 6 + step
        assert (reserved.keys.data_ptr() == buffer.data_ptr()) == (step < 2)
    reserved.crop(-3)
    plain.crop(-3)
    k, v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    assert torch.equal(reserved.update(k, v)[0], plain.update(k, v)[0])
    reserved.reset()
    assert reserved.get_seq_length() == 0 and torch.equal(reserved.update(k, v)[1], v)


def test_models_whose_cache_is_not_plain_keep_the_padded_prefill(tiny):
    from clients.hf_generation import rows_prefill_fits

    model, _ = tiny
    assert rows_prefill_fits(model)

    def forward(input_ids, logits_to_keep=0): ...

    def old_forward(input_ids): ...

    sliding = SimpleNamespace(config=SimpleNamespace(layer_types=["full_attention", "sliding_attention"]), forward=forward)
    mistral_like = SimpleNamespace(config=SimpleNamespace(sliding_window=4096), forward=forward)
    qwen_like = SimpleNamespace(config=SimpleNamespace(sliding_window=4096, use_sliding_window=False), forward=forward)
    no_logits_to_keep = SimpleNamespace(config=SimpleNamespace(), forward=old_forward)
    assert [rows_prefill_fits(m) for m in (sliding, mistral_like, qwen_like, no_logits_to_keep)] == [False, False, True, False]


def test_sampled_logprobs_are_the_temperature_scaled_distribution_of_every_row(tiny):
    from clients.hf_generation import hf_batch_generate

    model, tokenizer = tiny
    torch.manual_seed(0)
    turns = hf_batch_generate(model, tokenizer, 0.7)(contexts(tokenizer), [6, 6, 2, 6])
    for context, (new, logprobs) in zip(contexts(tokenizer), turns):
        assert 0 < len(new) == len(logprobs)
        with torch.no_grad():
            logits = model(torch.tensor([context + new])).logits[0, len(context) - 1 : -1].float() / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(new)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-4)


def test_a_row_stops_at_its_own_eos_while_the_others_go_on(tiny):
    from clients.hf_generation import hf_batch_generate

    model, tokenizer = tiny
    torch.manual_seed(1)  # sampled: an untrained model's greedy rows repeat one token
    plain = hf_batch_generate(model, tokenizer, 1.0)(contexts(tokenizer), [8, 8, 8, 8])
    # a token some row draws first after a few others becomes the end of turn
    row, at = next((r, k) for r, (ids, _) in enumerate(plain) for k in range(1, 8) if ids[k] not in ids[:k])
    stop = plain[row][0][at]
    ending = SimpleNamespace(eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)  # the same draws: finished rows still take part in every step's sampling
    turns = hf_batch_generate(model, ending, 1.0)(contexts(tokenizer), [8, 8, 8, 8])
    assert turns[row][0] == plain[row][0][: at + 1] and len(turns[row][1]) == at + 1
    assert any(len(ids) == 8 for ids, _ in turns)  # another row went on to its budget
    for (ids, _), (full, _) in zip(turns, plain):
        assert ids == (full[: full.index(stop) + 1] if stop in full else full)


def test_the_batcher_waits_for_every_live_episode_then_runs_one_batch():
    calls: list[list[list[int]]] = []

    def generate(ctxs, budgets):
        calls.append(ctxs)
        return [([c[0], b], [-0.5, -0.25]) for c, b in zip(ctxs, budgets)]

    sampler = BatchedSampler(generate, window_s=5.0)
    results: dict[int, tuple] = {}
    all_live = threading.Barrier(4)

    def episode(i: int) -> None:
        with sampler.episode():
            all_live.wait()
            time.sleep(0.02 * (3 - i))  # arrivals spread over 60 ms: far inside the window
            results[i] = sampler([10 + i], 3)

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 2.0  # the last arrival started the batch, not the 5 s window
    assert calls == [[[10], [11], [12], [13]]]  # one batch, ordered by token ids whatever the arrival order
    assert results == {i: ([10 + i, 3], [-0.5, -0.25]) for i in range(4)}
    assert sampler.stats.batches == 1 and sampler.stats.largest == 4


def test_the_window_bounds_the_wait_for_an_episode_that_is_busy_elsewhere():
    sampler = BatchedSampler(lambda ctxs, budgets: [([1], [0.0]) for _ in ctxs], window_s=0.1)
    with sampler.episode(), sampler.episode():  # two live episodes, only one ever asks
        started = time.monotonic()
        assert sampler([5], 1) == ([1], [0.0])
        waited = time.monotonic() - started
    assert 0.09 <= waited < 1.5


def test_a_failing_backend_fails_every_turn_of_its_batch_and_the_sampler_keeps_serving():
    fail = [True]

    def generate(ctxs, budgets):
        if fail.pop(0) if fail else False:
            raise RuntimeError("device lost")
        return [([7], [-1.0]) for _ in ctxs]

    sampler = BatchedSampler(generate, window_s=0.0)
    with pytest.raises(RuntimeError, match="device lost"):
        sampler([1], 2)
    assert sampler([1], 2) == ([7], [-1.0])
    with pytest.raises(ValueError, match="budget"):
        sampler([1], 0)
    wrong = BatchedSampler(lambda ctxs, budgets: [], window_s=0.0)
    with pytest.raises(RuntimeError, match="0 turns for 1 contexts"):
        asyncio.run(wrong.asample([1], 2))


def test_a_steps_episodes_share_batches_through_the_real_gym(gym, tiny):
    model, tokenizer = tiny
    prompts = [[{"role": "user", "content": "q", "arena_id": a}] for a in ["airline-seats-aa100", "clinic-refills-rx12", "retail-status-o1002"] * 2]
    with GymSession(gym.url) as session:
        # a long window: on a loaded machine creating six episodes can outlast the default 50 ms, and this test is
        # about batching across episodes, not about the window (tested above)
        sampler = hf_sampler(model, tokenizer, 1.0, window_s=30.0)
        rollout = MCPRollout(session, tokenizer, sampler=sampler, max_turns=2, max_new_tokens=6, failure_rate=0.0)
        episodes = rollout.play(prompts)
    stats = rollout.policy.chat_model.sample.stats
    assert len(episodes) == 6 and all(len(e.completion_ids) == len(e.env_mask) == len(e.logprobs) for e in episodes)
    turns = sum(e.turns for e in episodes)
    assert stats.turns == turns and stats.largest == 6  # the first turns of all six episodes in one generate
    assert stats.batches < turns


def test_rows_are_drawn_from_their_own_distribution_and_never_a_token_without_mass():
    from clients.hf_generation import draw_rows

    torch.manual_seed(0)
    probabilities = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1, 0.6]])
    logprobs = probabilities.log().repeat(4000, 1)
    drawn = draw_rows(logprobs)[:, 0].view(4000, 3)
    for row, expected in enumerate(probabilities):
        counts = torch.bincount(drawn[:, row], minlength=5).float()
        assert torch.all(counts[expected == 0] == 0)
        # 4,000 draws: a count's standard deviation is at most 32, so 5 of them is a failure, not noise
        assert torch.all((counts - 4000 * expected).abs() < 160), (row, counts)
    # a variate that rounds up to the total still lands on the last token with mass, not on the zeros after it
    from unittest import mock

    with mock.patch("torch.rand", lambda shape, **kw: torch.full(shape, 1.0)):
        assert draw_rows(probabilities.log()).flatten().tolist() == [3, 4, 4]
