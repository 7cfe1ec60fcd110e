"""`astra-gym train sft|grpo`: one config model per command, TRL underneath.

SFT reads the synthesis track's `train.jsonl` (`messages` + `tools`) with assistant-only loss. GRPO plays every
step's episodes on the gym over MCP (a gym started in-process over `arenas`, or `gym` URLs), beta = 0 and
no entropy term, F1 reward from the gym, Adaptive Batch Filling and banded distractor tools. GRPO reads what
it plays: its prompts and distractor candidates are the arenas the gym serves (`GET /api/arenas`, then each
spec with the operator's token), so an in-process gym and `--gym URL` behave the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


from clients.gym_client import GymClient
from clients.gym_session import GymSession
from gym_server.jsonl import read_rows
from gym_server.models import Arena
from trainer.configs import GRPORunConfig, SFTRunConfig
from trainer.distributed import records_path, world_size


def _load(name: str) -> tuple[Any, Any]:
    from trainer.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer(name)


def sft_dataset(path: Path) -> Any:
    """Rows with `messages` and `tools`: synthesis' `sft/train.jsonl`, or trajectory records (e.g. an oracle
    `astra-gym eval` run); tools become the JSON string TRL reads, records that failed are skipped (and so is
    a last line cut short by a kill, as every resumable JSONL reader does)."""
    import json

    from datasets import Dataset

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    rows = []
    for row in read_rows(Path(path)):
        if row.get("error") or not row.get("messages"):
            continue
        tools = row.get("tools") or []
        messages = row["messages"]
        if row.get("system_prompt") and messages[0].get("role") != "system":  # the prompt the policy is played with
            messages = [{"role": "system", "content": row["system_prompt"]}, *messages]
        rows.append({"messages": messages, "tools": tools if isinstance(tools, str) else json.dumps(tools)})
    if not rows:
        raise ValueError(f"{path}: no usable rows (need messages and tools)")
    return Dataset.from_list(rows)


def run_sft(config: SFTRunConfig) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    from trainer.callbacks import KeepResumeStateForNewest, MetricsWriter

    model, tokenizer = _load(config.model)
    dataset = sft_dataset(config.data)
    peft_config = None
    if config.lora_rank:
        try:
            from peft import LoraConfig
        except ImportError as exc:
            raise ValueError("--lora-rank needs peft: pip install peft") from exc
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(config.out), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, assistant_only_loss=True, max_length=config.max_length, logging_steps=1,
        save_steps=config.save_steps, report_to=[], use_cpu=not _cuda(), **_checkpointing(SFTConfig, config.gradient_checkpointing),
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                         callbacks=[KeepResumeStateForNewest(config.keep_resume_state), MetricsWriter(config.out)])  # fmt: skip
    result = trainer.train(resume_from_checkpoint=config.resume or None)
    trainer.save_model(str(config.out / "final"))
    if args.should_save:
        tokenizer.save_pretrained(str(config.out / "final"))
    return {"steps": result.global_step, "loss": result.training_loss, "model": str(config.out / "final")}


def grpo_arguments(config: GRPORunConfig) -> dict[str, Any]:
    """`GRPOConfig` fields for a run. With a vLLM server, TRL pushes the policy's weights to it before every
    step; that push needs vllm installed here too, so its absence is an error now, not after the gym started."""
    from trl import GRPOConfig

    arguments: dict[str, Any] = dict(
        output_dir=str(config.out), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        num_generations=config.num_generations, beta=0.0, learning_rate=config.learning_rate, **_warmup(GRPOConfig, config.warmup_ratio),
        max_completion_length=config.max_completion_length, logging_steps=1, save_steps=config.save_steps,
        report_to=[], use_cpu=not _cuda(), seed=config.seed, temperature=config.temperature,
        # a turn cut off by the budget is a failed episode (the gym scored it 0) and must cost the policy like one:
        # masked out, it is the one failure never pushed down, and a policy whose wrong answers are pushed down
        # drifts into rambling (seen: held-out reward 0.17 -> 0.00 in 3 steps at lr 3e-3)
        mask_truncated_completions=config.mask_truncated,
        **_checkpointing(GRPOConfig, config.gradient_checkpointing),
    )  # fmt: skip
    if config.vllm_server and config.vllm_colocate:
        raise ValueError("choose one of --vllm-server and --vllm-colocate")
    if world_size() > 1 and not config.gym:
        raise ValueError(f"{world_size()} training processes share one gym: start it (astra-gym serve) and pass --gym URL")
    if config.abf and config.batch_size % config.num_generations:
        raise ValueError("Adaptive Batch Filling refills whole groups on each process: --batch-size must be a multiple of --num-generations")
    if config.vllm_server or config.vllm_colocate:
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ValueError(
                "--vllm-server needs vllm installed where training runs: TRL sends the new weights to the server "
                "after every step (pip install 'astra-gym[vllm]'). Without it, generation uses transformers."
                if config.vllm_server else
                "--vllm-colocate needs vllm installed (pip install 'astra-gym[vllm]'). Without it, generation uses transformers."
            )  # fmt: skip
    if config.vllm_server:
        arguments.update(use_vllm=True, vllm_mode="server", vllm_server_base_url=config.vllm_server)
    if config.vllm_colocate:  # TRL builds the engine; the rollout samples every turn with it (`colocated_sampler`)
        arguments.update(use_vllm=True, vllm_mode="colocate")
    return arguments


def colocated_sampler(temperature: float) -> Callable[[Any], Any]:
    """Builds the rollout's sampler from TRL's colocated engine, once the trainer has started it."""

    def build(trainer: Any) -> Any:
        from clients.batching import BatchedSampler
        from trainer.vllm_colocate import vllm_llm_batch_generate

        return BatchedSampler(vllm_llm_batch_generate(trainer.vllm_generation.llm, temperature))

    return build


def run_grpo(config: GRPORunConfig, reward: Callable[..., list[float]] | None = None, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """`reward` is the reward function GRPO sees (`config.reward`'s, the gym's F1 by default, unless given:
    a shaped reward, or the negated one of the learning test's control); it gets the rollout's fields.
    `callbacks` are more `TrainerCallback`s. Under `accelerate launch` every process runs this; `episodes`
    counts every rank's."""
    arguments = grpo_arguments(config)
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread

    gym_thread = None if config.gym else GymThread.private(ServeConfig(port=0, arenas=config.arenas)).start()
    try:
        url, token = (config.gym, config.token) if gym_thread is None else (gym_thread.url, gym_thread.config.token)
        with GymSession(url, token) as session:  # type: ignore[arg-type]
            arenas = session.run(training_arenas(session.gym, config.arena_filter))  # a dead gym or wrong token fails here
            return _train_grpo(config, arguments, session, arenas, reward, callbacks or [])
    finally:
        if gym_thread is not None:
            gym_thread.stop()


def _train_grpo(config: GRPORunConfig, arguments: dict[str, Any], session: GymSession, arenas: list[Arena],
                reward: Callable[..., list[float]] | None, callbacks: list[Any]) -> dict[str, Any]:  # fmt: skip
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trainer.callbacks import KeepResumeStateForNewest, MetricsWriter
    from clients.distractors import DistractorSampler
    from trainer.rollout import TRAINING_REWARDS, ABFSettings, MCPRollout, training_reward

    prompts = [[{"role": "user", "content": a.question, "arena_id": a.id}] for a in arenas if a.kind == "arena"]
    if not prompts:
        raise ValueError(f"the gym serves no arena with a question matching {config.arena_filter!r}")
    model, tokenizer = _load(config.model)
    sampler = None
    if config.vllm_server:
        from trainer.vllm_server import vllm_server_generate_fn

        sampler = vllm_server_generate_fn(config.vllm_server, config.max_new_tokens, config.temperature)
    distractors = DistractorSampler(arenas, config.distractors, config.embedding_model, config.seed).sample if any(config.distractors.values()) else None
    config.out.mkdir(parents=True, exist_ok=True)
    args = GRPOConfig(**arguments)  # joins the other processes, if any: each rank plays its slice of every step
    rollout = MCPRollout(
        session, tokenizer, model=model, sampler=sampler, max_turns=config.max_turns, max_new_tokens=config.max_new_tokens,
        temperature=config.temperature, failure_rate=config.failure_rate, system_prompt=config.system_prompt, seed=config.seed,
        distractors=distractors, abf=ABFSettings(prompts, config.num_generations, signal=TRAINING_REWARDS[config.reward]) if config.abf else None,
        records=records_path(config.out, args.process_index, args.world_size), rank=args.process_index, world=args.world_size,
        sampler_from_trainer=colocated_sampler(config.temperature) if config.vllm_colocate else None,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=reward or training_reward(config.reward), args=args, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, rollout_func=rollout,
                          callbacks=[KeepResumeStateForNewest(config.keep_resume_state), MetricsWriter(config.out), *callbacks])  # fmt: skip
    result = trainer.train(resume_from_checkpoint=config.resume or None)
    trainer.save_model(str(config.out / "final"))
    if args.should_save:
        tokenizer.save_pretrained(str(config.out / "final"))
    episodes = trainer.accelerator.reduce(torch.tensor([rollout.episodes_played], device=trainer.accelerator.device), "sum")
    return {"steps": result.global_step, "episodes": int(episodes.item()), "processes": args.world_size, "model": str(config.out / "final")}


async def training_arenas(gym: GymClient, pattern: str) -> list[Arena]:
    """The specs of the gym's arenas whose ids match `pattern` (the operator's view: questions, gold, tools)."""
    import fnmatch

    ids = [s.id for s in await gym.arenas() if fnmatch.fnmatchcase(s.id, pattern)]
    if not ids:
        raise ValueError(f"the gym serves no arena matching {pattern!r}")
    return await gym.arena_specs(ids)


def _checkpointing(config_class: type, on: bool) -> dict[str, bool]:
    """transformers 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns);
    older 5.x, like the GPU machine's 5.17, only knows the old one."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def _warmup(config_class: type, ratio: float) -> dict[str, float]:
    """transformers 5.2x takes a warmup ratio as a float `warmup_steps` below 1 (`warmup_ratio` is gone); older
    5.x, like the GPU machine's 5.17, has `warmup_ratio`."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
