"""GRPO's `rollout_func`: every prompt of a step becomes an episode on the gym, played turn by turn with the
policy's own generation, its tools called over MCP through `clients/`. Returned per episode:

- `prompt_ids`: the rendered system/user turn with the tools, up to the first assistant header;
- `completion_ids`: every token after it: the model's turns and, between them, the tool-response tokens;
- `logprobs`: the sampling log-probabilities of the model's tokens (0.0 for tool tokens);
- `env_mask`: 1 for tokens the model generated, 0 for tokens the environment wrote, so the loss skips them;
- the gym's reward breakdown (`gym_reward`, `recall`, `precision`, `solved`, `tool_calls`) for reward functions.

The arena of a prompt rides in its user message (`{"role": "user", "content": ..., "arena_id": ...}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clients.agent import parse_arguments
from clients.gym_client import GymClient, GymError
from clients.rollout import EpisodeNotPlayed
from clients.tool_calls import parse_tool_calls
from clients.toolbox import MCPToolbox, shared_http_client
from gym_server.models import EpisodeCreate

GenerateFn = Callable[[list[int]], tuple[list[int], list[float]]]
"""(context token ids) -> (new token ids, their log-probabilities); stops at EOS or the token budget."""


@dataclass
class EpisodeTokens:
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    reward: dict[str, Any] = field(default_factory=dict)
    turns: int = 0
    truncated: bool = False


def hf_generate_fn(model: Any, tokenizer: Any, max_new_tokens: int, temperature: float = 1.0) -> GenerateFn:
    """Sampling with transformers; log-probabilities of the sampled tokens under the sampling distribution."""
    import torch

    lock = threading.Lock()

    def generate(ids: list[int]) -> tuple[list[int], list[float]]:
        with lock, torch.no_grad():
            inputs = torch.tensor([ids], device=model.device)
            out = model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0, output_scores=True,
                return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
            new = out.sequences[0, len(ids) :].tolist()
            logprobs = [float(torch.log_softmax(score[0].float(), -1)[tok]) for score, tok in zip(out.scores, new)]
        return new, logprobs

    return generate


def _cut_after_last(text: str, marker: str) -> str:
    at = text.rfind(marker)
    return text if at == -1 else text[: at + len(marker)]


class MCPRollout:
    """A `rollout_func` for TRL's GRPOTrainer; also callable on its own with a `GenerateFn` (tests, evaluation)."""

    def __init__(self, gym_url: str, *, max_turns: int = 4, max_new_tokens: int = 96, temperature: float = 1.0,
                 failure_rate: float | None = None, system_prompt: str | None = None, token: str | None = None,
                 vllm_server_url: str | None = None) -> None:  # fmt: skip
        self.gym_url = gym_url
        self.max_turns = max_turns
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.failure_rate = failure_rate
        self.system_prompt = system_prompt
        self.token = token
        self.vllm_server_url = vllm_server_url
        """Sample turns from a `trl vllm-serve` server (TRL keeps its weights in sync) instead of transformers."""
        self._vllm_generate: GenerateFn | None = None
        self.episodes_played = 0
        self.distractors: Any = None
        """A `DistractorSampler`: irrelevant tools from three similarity bands served in every episode."""
        self.filler: Any = None
        """An `AdaptiveBatchFiller` once `enable_abf` was called."""

    def enable_abf(self, extra_prompts: list[Any], group_size: int, max_extra_rounds: int = 4) -> None:
        from trainer.abf import AdaptiveBatchFiller

        self.filler = AdaptiveBatchFiller(play=lambda prompts: [], extra_prompts=extra_prompts, group_size=group_size,
                                          max_extra_rounds=max_extra_rounds)  # fmt: skip

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        tokenizer = trainer.processing_class
        generate = self.generate_fn(trainer.model, tokenizer)
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            if self.filler is not None:
                self.filler.play = lambda batch: asyncio.run(self.play(batch, tokenizer, generate))
                episodes = self.filler.fill(prompts)
                for key, value in self.filler.log().items():
                    trainer._metrics["train"][key].append(float(value))
            else:
                episodes = asyncio.run(self.play(prompts, tokenizer, generate))
        finally:
            trainer.model.train(was_training)
        batch = self.as_batch(episodes)
        for key in ("recall", "precision", "solved", "tool_calls"):
            trainer._metrics["train"][f"gym/{key}"].append(sum(batch[key]) / max(1, len(batch[key])))
        return batch

    def generate_fn(self, model: Any, tokenizer: Any) -> GenerateFn:
        if self.vllm_server_url is None:
            return hf_generate_fn(model, tokenizer, self.max_new_tokens, self.temperature)
        if self._vllm_generate is None:
            from trainer.vllm_server import vllm_server_generate_fn

            self._vllm_generate = vllm_server_generate_fn(self.vllm_server_url, self.max_new_tokens, self.temperature)
        return self._vllm_generate

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

    async def play(self, prompts: list[Any], tokenizer: Any, generate: GenerateFn) -> list[EpisodeTokens]:
        async with shared_http_client() as http:
            gym = GymClient(self.gym_url, http, self.token)
            return list(await asyncio.gather(*(self._episode(gym, http, p, tokenizer, generate, i) for i, p in enumerate(prompts))))

    async def _episode(self, gym: GymClient, http: Any, prompt: Any, tokenizer: Any, generate: GenerateFn, index: int) -> EpisodeTokens:
        user = next(m for m in prompt if m["role"] == "user")
        distractors = self.distractors.sample(user["arena_id"]) if self.distractors is not None else []
        created = await gym.create_episode(EpisodeCreate(
            arena_id=user["arena_id"], seed=self.episodes_played + index, failure_rate=self.failure_rate, distractors=distractors,
        ))  # fmt: skip
        try:
            async with MCPToolbox.http_endpoint(created.mcp_url, http) as box:
                return await self._turns(gym, box, created.episode_id, user["content"], tokenizer, generate)
        finally:
            self.episodes_played += 1
            with contextlib.suppress(GymError):  # an episode already gone must not hide why the rollout failed
                await gym.delete(created.episode_id)

    async def _turns(self, gym: GymClient, box: MCPToolbox, episode_id: str, question: str, tokenizer: Any, generate: GenerateFn) -> EpisodeTokens:
        tools = box.openai_tools()
        messages: list[dict[str, Any]] = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": question})
        render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)  # noqa: E731
        episode = EpisodeTokens(prompt_ids=tokenizer(render(messages, True), add_special_tokens=False)["input_ids"])
        final = None
        for turn in range(1, self.max_turns + 1):
            episode.turns = turn
            new, logprobs = await asyncio.to_thread(generate, episode.prompt_ids + episode.completion_ids)
            episode.completion_ids += new
            episode.logprobs += logprobs
            episode.env_mask += [1] * len(new)
            if not new or new[-1] != tokenizer.eos_token_id:
                episode.truncated = True
                break
            text = tokenizer.decode(new, skip_special_tokens=False).replace(tokenizer.eos_token, "")
            content, calls = parse_tool_calls(text, id_prefix=f"call_{turn}")
            messages.append({"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})})
            if not calls or turn == self.max_turns:
                final = content
                break
            for call in calls:
                arguments, problem = parse_arguments(call["function"]["arguments"])
                reply = f"Error: malformed call: {problem}" if arguments is None else (await box.call(call["function"]["name"], arguments)).text
                messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": reply})
            if box.transport_errors:  # a reward for an episode the gym did not serve would train on noise
                raise EpisodeNotPlayed(f"episode {episode_id}: {box.transport_errors[0]}")
            # the environment's tokens: what the template writes after the model's end-of-turn, up to the next header
            before = _cut_after_last(render(messages[: -len(calls)], False), tokenizer.eos_token)
            after = render(messages, True)
            segment = after[len(before) :] if after.startswith(before) else after
            env_ids = tokenizer(segment, add_special_tokens=False)["input_ids"]
            episode.completion_ids += env_ids
            episode.logprobs += [0.0] * len(env_ids)
            episode.env_mask += [0] * len(env_ids)
        episode.reward = (await gym.score(episode_id, final)).model_dump()
        return episode



def gym_reward(prompts: list[Any], completions: list[Any], gym_reward: list[float], **_: Any) -> list[float]:
    """The reward function GRPO sees: ASTRA's F1, as the gym's score endpoint computed it."""
    return list(gym_reward)
