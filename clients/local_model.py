"""A chat model over token ids: `TokenChatModel` renders the chat template (with tools), samples token ids
with a `Sampler` (transformers in this process, or a vLLM server) and answers in OpenAI's response format, so
`run_agent` plays it like any served model. GRPO plays the same model through `RecordingChatModel`, which also
records the episode's token tape (the sampled ids and their log-probabilities, and the environment's tokens
in between, masked): one loop for evaluation and training, token-level sampling as a model variant."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from clients.agent import AgentResult, ModelEndpointError, run_agent
from clients.batching import BatchedSampler
from clients.policies import ChatPolicy, EpisodeContext
from clients.records import TokenTape
from clients.tool_calls import parse_tool_calls

Sampler = Callable[[list[int], int], tuple[list[int], list[float]]]
"""(context token ids, token budget) -> (new token ids, their log-probabilities under the sampling
distribution); stops at EOS or the budget. Blocking: the model runs it in a worker thread, except a
`BatchedSampler`, which it awaits (its turns join the other live episodes' batches)."""


class TokenChatModel:
    """`complete()` renders the conversation, samples one assistant turn and parses its tool calls."""

    PROMPTS_KEPT = 256

    def __init__(self, tokenizer: Any, sample: Sampler, name: str = "local") -> None:
        self.tokenizer = tokenizer
        self.sample = sample
        self.name = name
        self._prompts: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    @property
    def model_id(self) -> str:
        return self.name

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], generation: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=generation)

    @contextmanager
    def episode(self) -> Iterator[None]:
        """Wrap one episode's play: a batching sampler waits for the turns of every episode inside one."""
        with self.sample.episode() if isinstance(self.sample, BatchedSampler) else nullcontext():
            yield

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
        """The token ids of the conversation so far, ready for the assistant's turn. A GRPO group's episodes (and an
        evaluation's repeats) open with the same conversation and tools: the chat template runs once for all of
        them (it is a good share of an episode's client CPU), keyed by the conversation's exact JSON."""
        try:
            key = json.dumps([messages, tools], ensure_ascii=False)  # key order too: a template may render it
        except (TypeError, ValueError):  # something the template may render but JSON cannot name: no reuse
            return self.encode(self.render(messages, tools, True))
        ids = self._prompts.get(key)
        if ids is None:
            ids = self._prompts[key] = tuple(self.encode(self.render(messages, tools, True)))
            if len(self._prompts) > self.PROMPTS_KEPT:
                self._prompts.popitem(last=False)
        else:
            self._prompts.move_to_end(key)
        return list(ids)

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        response, _, _ = await self.sample_turn(messages, self.prompt_ids(messages, tools), max_tokens)
        return response

    async def sample_turn(self, messages: list[dict[str, Any]], context: list[int], max_tokens: int) -> tuple[dict[str, Any], list[int], list[float]]:
        """(OpenAI-format response, sampled ids, their log-probabilities) for one turn after `context`."""
        if isinstance(self.sample, BatchedSampler):
            new, logprobs = await self.sample.asample(context, max_tokens)
        else:
            new, logprobs = await asyncio.to_thread(self.sample, context, max_tokens)
        eos = self.tokenizer.eos_token_id
        finished = bool(new) and new[-1] == eos
        text = self.tokenizer.decode(new, skip_special_tokens=False).replace(self.tokenizer.eos_token, "")
        turn = 1 + sum(1 for m in messages if m["role"] == "assistant")  # call ids depend on the episode only
        if finished:
            content, calls = parse_tool_calls(text, id_prefix=f"call_{turn}")
        else:  # cut off: the agent loop runs none of its calls, so none is parsed
            content, calls = (text or None), []
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        response = {
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else ("stop" if finished else "length")}],
            "usage": {"prompt_tokens": len(context), "completion_tokens": len(new)},
            "model": self.name,
        }
        return response, list(new), list(logprobs)


class RecordingChatModel:
    """One episode's `TokenChatModel` that keeps its token tape. Each turn is sampled after exactly the tape
    (never a re-tokenization of the conversation), so the logprobs are those of the tokens trained on; the
    environment's tokens are what the chat template writes after the model's end-of-turn, up to the next
    assistant header."""

    def __init__(self, model: TokenChatModel) -> None:
        self.model = model
        self.tape = TokenTape()

    @property
    def model_id(self) -> str:
        return self.model.model_id

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        tape = self.tape
        if not tape.prompt_ids:
            tape.prompt_ids = self.model.prompt_ids(messages, tools)
        else:
            env = self.model.encode(self._environment_text(messages, tools))
            tape.completion_ids += env
            tape.logprobs += [0.0] * len(env)
            tape.env_mask += [0] * len(env)
        response, new, logprobs = await self.model.sample_turn(messages, tape.prompt_ids + tape.completion_ids, max_tokens)
        if len(logprobs) != len(new):
            raise ModelEndpointError(f"the sampler returned {len(logprobs)} logprobs for {len(new)} tokens")
        tape.completion_ids += new
        tape.logprobs += logprobs
        tape.env_mask += [1] * len(new)
        tape.truncated = response["choices"][0]["finish_reason"] == "length"
        return response

    def _environment_text(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        eos = self.model.tokenizer.eos_token
        before = self.model.render(messages[: last + 1], tools, False)
        at = before.rfind(eos)
        before = before if at == -1 else before[: at + len(eos)]
        after = self.model.render(messages, tools, True)
        if not after.startswith(before):
            raise ValueError("the chat template renders earlier turns differently once tool results follow; the token tape cannot be extended")
        return after[len(before) :]


class RecordingPolicy:
    """A `TokenChatModel` in the agent loop, recording each episode's token tape into its result. Its caller
    (the rollout) counts each episode as live from before the episode is created, with `chat_model.episode()`."""

    def __init__(self, model: TokenChatModel, max_turns: int, max_tokens: int, name: str = "grpo") -> None:
        self.name = name
        self.model: str | None = model.model_id
        self.chat_model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens

    async def play(self, ctx: EpisodeContext) -> AgentResult:
        recorder = RecordingChatModel(self.chat_model)
        result = await run_agent(recorder, ctx.toolbox, ctx.episode.prompt, system_prompt=ctx.system_prompt,
                                 max_turns=self.max_turns, max_tokens=self.max_tokens)  # fmt: skip
        result.tokens = recorder.tape
        return result


class LocalChatPolicy(ChatPolicy):
    """A `TokenChatModel` in the agent loop (evaluation): its episodes share the sampler's batches."""

    def __init__(self, model: TokenChatModel, max_turns: int = 16, max_tokens: int = 1024, name: str = "local") -> None:
        super().__init__(model, max_turns, max_tokens, name=name)
        self.chat_model = model

    async def play(self, ctx: EpisodeContext) -> AgentResult:
        with self.chat_model.episode():
            return await super().play(ctx)


def hf_sampler(model: Any, tokenizer: Any, temperature: float = 0.0, *, with_logprobs: bool = True, window_s: float = 0.05,
               max_batch: int = 64) -> BatchedSampler:  # fmt: skip
    """Sampling with transformers (greedy at temperature 0), the concurrent episodes' turns batched into one
    `generate` (`clients.hf_generation`). The log-probabilities are those of the sampling distribution;
    without `with_logprobs` none are computed (evaluation does not need them), and the list is empty."""
    from clients.hf_generation import hf_batch_generate

    return BatchedSampler(hf_batch_generate(model, tokenizer, temperature, with_logprobs=with_logprobs), window_s=window_s, max_batch=max_batch)


def load_pretrained(name_or_path: str) -> tuple[Any, Any]:
    """A causal LM and its tokenizer by hub name or local folder, the way users run real models."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ValueError("the local policy needs the training extra: pip install 'astra-gym[train]'") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load model {name_or_path!r}: {exc}") from None
    model.eval()
    return model, tokenizer
