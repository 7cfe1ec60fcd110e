"""A local transformers model behind the same interface as a chat endpoint, so `run_agent` (and every
policy built on it) plays episodes with it through MCP exactly as it would with a served model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from clients.tool_calls import parse_tool_calls


class LocalChatModel:
    """`complete()` renders the chat template (with tools), generates, and answers in OpenAI's format."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "local", temperature: float = 0.0, seed: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name
        self.temperature = temperature
        self.seed = seed
        self._lock = threading.Lock()  # one generate at a time per model
        self._calls = 0

    @property
    def model_id(self) -> str:
        return self.model_name

    def _generate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        import torch

        with self._lock:
            self._calls += 1
            ids = self.tokenizer.apply_chat_template(
                messages, tools=tools or None, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            input_ids = ids["input_ids"].to(self.model.device)
            torch.manual_seed(self.seed + self._calls)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids, attention_mask=ids["attention_mask"].to(self.model.device), max_new_tokens=max_tokens,
                    do_sample=self.temperature > 0, temperature=self.temperature or None, top_p=None, top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )  # fmt: skip
        new = out[0, input_ids.shape[1]:]
        finished = bool(len(new)) and int(new[-1]) == self.tokenizer.eos_token_id
        text = self.tokenizer.decode(new, skip_special_tokens=False)
        for special in ("<|im_end|>", "<|endoftext|>"):
            text = text.replace(special, "")
        content, calls = parse_tool_calls(text, id_prefix=f"call_{self._calls}")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else ("stop" if finished else "length")}],
            "usage": {"prompt_tokens": int(input_ids.shape[1]), "completion_tokens": int(len(new))},
            "model": self.model_name,
        }

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        return await asyncio.to_thread(self._generate, messages, tools, max_tokens)


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
