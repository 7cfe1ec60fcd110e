"""Models for tests and demos with nothing downloaded: a Qwen3-architecture model built from a config and a
byte-level BPE tokenizer trained in-process, with a chat template that renders tools, tool calls and tool
responses and marks assistant turns with `{% generation %}` (TRL's assistant-only loss needs it).

Real models load by name exactly as users run them: `load_model_and_tokenizer("Qwen/Qwen3-8B")`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TINY = "tiny"
"""The model name that builds a tiny model instead of loading one."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

CHAT_TEMPLATE = (
    "{%- set sys = messages[0].content if messages and messages[0].role == 'system' else none -%}"
    "{%- if tools or sys -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if sys %}{{ sys }}{% endif -%}"
    "{%- if tools -%}"
    "{%- if sys %}{{ '\\n\\n' }}{% endif -%}"
    "{{ '# Tools\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{ (tool.function if tool.function is defined else tool) | tojson }}{{ '\\n' }}{% endfor -%}"
    "{{ '</tools>\\nTo call a tool, write <tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call>.' }}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}"
    "{{ '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{%- if message.content %}{{ message.content }}{% endif -%}"
    "{%- for call in (message.tool_calls or []) -%}"
    "{%- set args = call.function.arguments -%}"
    "{{ '<tool_call>{\"name\": ' + (call.function.name | tojson) + ', \"arguments\": ' }}"
    "{{ args if args is string else args | tojson }}{{ '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- elif message.role == 'tool' -%}"
    "{{ '<|im_start|>user\\n<tool_response>' + message.content + '</tool_response><|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}"
)


def arena_text(arena: Any) -> list[str]:
    """What an arena puts in front of a model: its questions, tools, gold calls and data."""
    lines = [arena.question, *(s.question for s in arena.subtasks)]
    lines.extend(json.dumps(t.model_dump(by_alias=True)) for t in arena.tools)
    lines.extend(json.dumps(s.gold_call.model_dump()) for s in arena.subtasks if s.gold_call)
    lines.append(json.dumps(arena.initial_state.rows))
    return lines


def default_corpus() -> list[str]:
    """Text that covers what the tiny tokenizer will see: the built-in arenas' questions, tools and data."""
    from gym_server.builtin import builtin_arenas

    lines = [line for arena in builtin_arenas() for line in arena_text(arena)]
    lines.append("0123456789 {}[]:,\"' .-_ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return lines


def train_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024, *, across_words: bool = False,
                    whole_words: Iterable[str] = ()) -> Any:  # fmt: skip
    """A byte-level BPE tokenizer learned from `corpus`. `across_words` lets merges span spaces and punctuation,
    so text the corpus repeats verbatim (a tool call's fixed JSON, an item id with its quotes) becomes a few
    tokens: what lets a model this small write a well-formed call. `whole_words` (an id space, e.g.
    `synth.arenas.offline.entity_ids()`) become one token each wherever they stand as a word, as a large
    tokenizer keeps common words whole: copying an id is then copying one token, seen in training or not."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not across_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    words = list(dict.fromkeys(whole_words))
    if words:  # added before training, so no merge learns an id glued to its neighbours (" UA893" in one text, "UA893" in another)
        tok.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in words])
    tok.train_from_iterator(list(corpus if corpus is not None else default_corpus()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        chat_template=CHAT_TEMPLATE, model_max_length=4096,
    )  # fmt: skip
    return tokenizer


def tiny_model(tokenizer: Any, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Any:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4,
        max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def load_model_and_tokenizer(name_or_path: str, **from_pretrained: Any) -> tuple[Any, Any]:
    """`tiny` builds a fresh tiny model; anything else is `from_pretrained` (a hub name or a local folder)."""
    if name_or_path == TINY:
        tokenizer = train_tokenizer()
        return tiny_model(tokenizer), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **from_pretrained)
    return model, tokenizer


def save_tiny(path: str | Path) -> Path:
    """Write a tiny model and its tokenizer to a folder that `from_pretrained` loads (how tests reach the real path)."""
    model, tokenizer = load_model_and_tokenizer(TINY)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
