"""Adaptive Batch Filling keeps only groups whose rewards vary, rolls out more when short, carries overflow."""

from __future__ import annotations

from trainer.abf import AdaptiveBatchFiller
from trainer.rollout import EpisodeTokens


def player(rewards_by_prompt: dict[str, list[float]]):
    """Plays prompts deterministically: the i-th time a prompt is played in a group, it gets rewards[i]."""
    calls = []

    def play(prompts):
        calls.append(list(prompts))
        out = []
        for i, p in enumerate(prompts):
            r = rewards_by_prompt[p][i % len(rewards_by_prompt[p])]
            out.append(EpisodeTokens(prompt_ids=[1], completion_ids=[2], logprobs=[0.0], env_mask=[1], reward={"reward": r, "prompt": p}))
        return out

    return play, calls


def test_only_nonzero_variance_groups_and_overflow_carried():
    rewards = {"flat0": [0.0, 0.0], "flat1": [1.0, 1.0], "good_a": [0.0, 1.0], "good_b": [0.5, 1.0], "good_c": [0.2, 0.4]}
    play, calls = player(rewards)
    abf = AdaptiveBatchFiller(play=play, extra_prompts=["good_a", "good_b", "good_c"], group_size=2, seed=1)
    batch = abf.fill(["flat0", "flat0", "flat1", "flat1"])  # both of the trainer's groups are flat
    groups = [batch[i : i + 2] for i in range(0, len(batch), 2)]
    assert len(batch) == 4 and all(abf.has_signal(g) for g in groups)
    assert {e.reward["prompt"] for e in batch} <= {"good_a", "good_b", "good_c"}
    assert abf.stats.groups_dropped == 2 and abf.stats.groups_drawn >= 2
    # a batch with more valid groups than needed carries the rest over, and the next batch uses them first
    batch = abf.fill(["good_a", "good_a", "good_b", "good_b"])
    assert all(abf.has_signal(batch[i : i + 2]) for i in (0, 2))
    before = len(calls)
    abf.buffer.extend([[EpisodeTokens([1], [2], [0.0], [1], {"reward": r}) for r in (0.0, 1.0)] for _ in range(3)])
    carried = abf.fill(["flat0", "flat0", "flat1", "flat1"])
    assert len(calls) == before and len(carried) == 4 and len(abf.buffer) == 1  # served from the buffer, one left


def test_short_batches_are_filled_and_counted_when_nothing_varies():
    play, calls = player({"flat0": [0.0], "flat1": [1.0]})
    abf = AdaptiveBatchFiller(play=play, extra_prompts=["flat0"], group_size=2, max_extra_rounds=2)
    batch = abf.fill(["flat0", "flat0", "flat1", "flat1"])
    assert len(batch) == 4 and abf.stats.short_batches == 1 and abf.stats.groups_drawn == 4 and abf.stats.groups_dropped == 6
    # the filler is the flat groups already played (the trainer's own first), not a third round of rollouts
    assert len(calls) == 3 and [e.reward["prompt"] for e in batch] == ["flat0", "flat0", "flat1", "flat1"]
    assert not any(abf.has_signal(batch[i : i + 2]) for i in (0, 2))


def test_the_signal_is_the_field_grpo_trains_on():
    """Under a recall-only reward, a group whose F1 varies (calls counted differently) but whose recall does not
    carries no signal: the filler must look at the trained field, not at F1."""
    group = [EpisodeTokens([1], [2], [0.0], [1], {"reward": r, "recall": 1.0}) for r in (1.0, 0.5)]
    assert AdaptiveBatchFiller(play=lambda p: [], extra_prompts=[], group_size=2).has_signal(group)
    assert not AdaptiveBatchFiller(play=lambda p: [], extra_prompts=[], group_size=2, signal="recall").has_signal(group)
