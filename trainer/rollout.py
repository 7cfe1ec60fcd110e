"""GRPO's `rollout_func`: every prompt of a step becomes an episode on the gym, played by the episode runner
(`clients.runner.run_episode`) in the one agent loop, with the policy's own sampling as a recording chat
model (`clients.local_model.RecordingPolicy`). Each episode comes back as its token tape (`prompt_ids`,
`completion_ids`, `logprobs` of the sampling distribution, `env_mask` 0 on the environment's tokens) and the
gym's reward breakdown (`gym_reward`, `recall`, `precision`, `solved`, `tool_calls`) for the reward function.

A prompt names its arena in its user message (`{"role": "user", "content": ..., "arena_id": ...}`); what the
policy is asked is the gym's own prompt for that arena, with the run's system prompt, exactly as in
`astra-gym eval`. Episodes run on a `GymSession` (one event loop, one HTTP pool for the whole run). An
episode the gym could not serve stops training (`EpisodeNotPlayed`): it never becomes a reward. One lost with
its gym replica or process (`record.replica_lost`) is re-rolled, same arena and seed, on a live gym.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.agent import DEFAULT_SYSTEM_PROMPT
from clients.gym_session import GymSession
from clients.local_model import RecordingPolicy, Sampler, TokenChatModel, hf_sampler
from clients.records import TrajectoryRecord
from clients.runner import EpisodeNotPlayed, episode_seed, run_episode
from gym_server.models import DistractorRef
from trainer.abf import AdaptiveBatchFiller
from trainer.distributed import rank_attempt
from trainer.episodes import EpisodeTokens

REWARD_FIELDS = ("recall", "precision", "solved", "tool_calls")
MAX_REROLLS = 3
"""Times a step plays again the episodes lost with their gym replica before it gives up."""


@dataclass
class ABFSettings:
    """Adaptive Batch Filling: the prompts drawn from when a batch is short of groups with reward variance."""

    extra_prompts: list[Any]
    group_size: int
    max_extra_rounds: int = 4
    signal: str = "reward"
    """The reward breakdown's field the reward function returns: the variance ABF looks for."""


class MCPRollout:
    """A `rollout_func` for TRL's GRPOTrainer; `play` also runs on its own (tests, benchmarks)."""

    def __init__(
        self, session: GymSession, tokenizer: Any, *, model: Any = None, sampler: Sampler | None = None,
        max_turns: int = 4, max_new_tokens: int = 96, temperature: float = 1.0, failure_rate: float | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, seed: int = 0,
        distractors: Callable[[str], list[DistractorRef]] | None = None, abf: ABFSettings | None = None,
        records: Path | None = None, sampler_from_trainer: Callable[[Any], Sampler] | None = None, rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        """`sampler` samples the turns (a vLLM server's, a scripted one); without it, `model` does with
        transformers. `sampler_from_trainer` replaces it on the first call with one built from the trainer
        (TRL's colocated vLLM engine exists only once the trainer does). `distractors` picks each episode's
        distractor tools; `records` is a JSONL file every played episode is appended to (the trajectory record
        eval writes, without the tokens). `rank` of `world` training processes: each rank plays its own slice
        of a step's prompts, with seeds no other rank plays (`trainer.distributed.rank_attempt`)."""
        if sampler is None:
            if model is None:
                raise ValueError("the rollout needs a model or a sampler")
            sampler = hf_sampler(model, tokenizer, temperature)
        self.session = session
        self.model = model
        self.policy = RecordingPolicy(TokenChatModel(tokenizer, sampler, "policy"), max_turns, max_new_tokens)
        self.failure_rate = failure_rate
        self.system_prompt = system_prompt
        self.seed = seed
        self.distractors = distractors
        self.records = records
        self.rank, self.world = rank, world
        self.attempts: Counter[str] = Counter()
        """Episodes this rank played per arena: the next one's seed is `episode_seed(seed, arena, rank_attempt(...))`."""
        self.sampler_from_trainer = sampler_from_trainer
        self.generates_locally = sampler is None
        """The policy samples with transformers here: under DeepSpeed ZeRO-3 its weights are gathered for a rollout."""
        # each rank draws its own extra prompts (with one seed, every rank would refill with the same arenas)
        self.filler = None if abf is None else AdaptiveBatchFiller(self.play, abf.extra_prompts, abf.group_size, abf.max_extra_rounds, seed * world + rank, abf.signal)

    @property
    def episodes_played(self) -> int:
        return sum(self.attempts.values())

    def __call__(self, prompts: list[Any], trainer: Any = None) -> dict[str, list[Any]]:
        if self.sampler_from_trainer is not None and trainer is not None:
            self.policy.chat_model.sample = self.sampler_from_trainer(trainer)
            self.sampler_from_trainer = None
            self.generates_locally = False
        was_training = self.model.training if self.model is not None else False
        if self.model is not None:
            self.model.eval()
        try:
            with self._weights_for_generation(trainer):
                episodes = self.filler.fill(prompts) if self.filler is not None else self.play(prompts)
        finally:
            if self.model is not None:
                self.model.train(was_training)
        batch = self.as_batch(episodes)
        if self.filler is not None:
            batch["abf"] = self.filler.log()  # not a list: TRL gives every sample this value; gym_reward logs it
        return batch

    def _weights_for_generation(self, trainer: Any) -> AbstractContextManager[Any]:
        """TRL's own context for generating with a trained model: it gathers ZeRO-3's partitioned weights (every
        rank enters it at once: every rank rolls out every step) and pauses gradient checkpointing."""
        if trainer is None or not self.generates_locally:
            return nullcontext()
        from trl.models import unwrap_model_for_generation

        return unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                           gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)  # fmt: skip

    def play(self, prompts: list[Any]) -> list[EpisodeTokens]:
        """Play the prompts concurrently on the session's loop; one `EpisodeTokens` each, in order."""
        records = self.play_records(prompts)
        return [EpisodeTokens.of(r) for r in records]

    def play_records(self, prompts: list[Any]) -> list[TrajectoryRecord]:
        arena_ids = [next(m for m in p if m["role"] == "user")["arena_id"] for p in prompts]
        seeds = []
        for arena_id in arena_ids:  # seeds are fixed in prompt order before anything runs concurrently
            seeds.append(episode_seed(self.seed, arena_id, rank_attempt(self.attempts[arena_id], self.rank, self.world)))
            self.attempts[arena_id] += 1
        # one draw of distractor tools per arena and batch: a GRPO group compares its episodes on one prompt
        picks = {a: self.distractors(a) for a in dict.fromkeys(arena_ids)} if self.distractors is not None else {}
        records = self.session.run(self._play(arena_ids, seeds, picks))
        for _ in range(MAX_REROLLS):  # an episode lost with its gym is played again (same arena and seed) on a live one
            lost = [i for i, r in enumerate(records) if r.replica_lost]
            if not lost:
                break
            self._keep(records[i] for i in lost)
            for i, record in zip(lost, self.session.run(self._play([arena_ids[i] for i in lost], [seeds[i] for i in lost], picks))):
                records[i] = record
        self._keep(records)
        failed = next((r for r in records if r.error), None)
        if failed is not None:  # a reward for an episode the gym did not serve would train on noise
            raise EpisodeNotPlayed(f"episode {failed.episode_id} on {failed.arena_id}: {failed.error}")
        return records

    def _keep(self, records: Iterable[TrajectoryRecord]) -> None:
        if self.records is not None:
            with self.records.open("a", encoding="utf-8") as out:
                out.writelines(r.model_dump_json() + "\n" for r in records)

    async def _play(self, arena_ids: list[str], seeds: list[int], picks: dict[str, list[DistractorRef]]) -> list[TrajectoryRecord]:
        return list(await asyncio.gather(*(self._play_one(arena_id, seed, picks.get(arena_id, ())) for arena_id, seed in zip(arena_ids, seeds))))

    async def _play_one(self, arena_id: str, seed: int, distractors: Sequence[DistractorRef]) -> TrajectoryRecord:
        # live from the start: a batching sampler waits for this episode's first turn while the gym creates it
        with self.policy.chat_model.episode():
            return await run_episode(self.session.gym, self.policy, arena_id, seed=seed, failure_rate=self.failure_rate,
                                     system_prompt=self.system_prompt, distractors=distractors)  # fmt: skip

    @staticmethod
    def as_batch(episodes: list[EpisodeTokens]) -> dict[str, list[Any]]:
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": [e.logprobs for e in episodes],
            "env_mask": [e.env_mask for e in episodes],
            "gym_reward": [float(e.reward.get("reward", 0.0)) for e in episodes],
            "recall": [float(e.reward.get("recall", 0.0)) for e in episodes],
            "precision": [float(e.reward.get("precision", 0.0)) for e in episodes],
            "solved": [int(e.reward.get("solved", 0)) for e in episodes],
            "tool_calls": [int(e.reward.get("tool_calls", 0)) for e in episodes],
        }


def gym_reward(prompts: list[Any], completions: list[Any], gym_reward: list[float], log_metric: Callable[[str, float], None] | None = None,
               abf: list[dict[str, float]] | None = None, **fields: Any) -> list[float]:  # fmt: skip
    """The reward function GRPO sees: ASTRA's F1, as the gym's score endpoint computed it. It also logs the
    gym's breakdown and the batch filler's counters through TRL's `log_metric` hook."""
    if log_metric is not None:
        for key in REWARD_FIELDS:
            values = fields.get(key) or []
            if values:
                log_metric(f"gym/{key}", sum(float(v) for v in values) / len(values))
        for key, value in ((abf or [None])[0] or {}).items():
            log_metric(key, float(value))
    return list(gym_reward)


TRAINING_REWARDS = {"f1": "reward", "recall": "recall", "precision": "precision"}
"""What `GRPORunConfig.reward` names -> the field of the gym's reward breakdown GRPO then maximizes."""


def training_reward(kind: str) -> Callable[..., list[float]]:
    """The reward function for `kind`: F1 (`gym_reward`), or recall or precision alone, the paper's ablations
    (recall alone pays for every call that might solve a sub-task, so it invites tool overuse; precision alone
    pays for calling little, so it invites underuse). Every kind logs the whole breakdown."""
    if kind not in TRAINING_REWARDS:
        raise ValueError(f"unknown reward {kind!r}; use one of {sorted(TRAINING_REWARDS)}")
    if kind == "f1":
        return gym_reward

    def reward(prompts: list[Any], completions: list[Any], log_metric: Callable[[str, float], None] | None = None, **fields: Any) -> list[float]:
        gym_reward(prompts, completions, log_metric=log_metric, **fields)
        return [float(v) for v in fields[kind]]

    reward.__name__ = f"gym_{kind}"  # TRL logs each reward function under its name
    return reward
