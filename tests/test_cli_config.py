"""One config per command: every command takes `--config`, a run loads the same from YAML as from flags, flags
override the file, a bad file exits 2 naming the problem, and `--help` shows each field's description. The
commands' runs are swapped for a recorder, so these tests parse configs and start nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.rich_utils
import yaml
from pydantic import BaseModel
from typer.main import get_command
from typer.testing import CliRunner

from gym_server.cli import app
from gym_server.cli.options import COMMANDS

VERBS = {
    "serve", "emulate", "episode", "eval", "demo", "arenas list", "arenas show", "arenas validate", "synth tools",
    "synth chains", "synth tasks", "synth trajectories", "synth sft", "synth arenas", "train sft", "train grpo",
    "suites install", "view",
}  # fmt: skip

SFT_SYNTH = (
    ["--tooldocs", "a.json", "--upstream", "time=python -m mcp_server_time", "--llm-base-url", "http://x/v1", "--model", "m",
     "--api-key-env", "KEY", "--agent-model", "am", "--concurrency", "4", "--chains-per-server", "2", "--min-reward", "0.5",
     "--seed", "3", "--out", "runs/s"],
    {"tooldocs": ["a.json"], "upstreams": ["time=python -m mcp_server_time"], "llm": {"base_url": "http://x/v1", "model": "m", "api_key_env": "KEY"},
     "agent_model": "am", "concurrency": 4, "chains_per_server": 2, "min_reward": 0.5, "seed": 3, "out": "runs/s"},
)  # fmt: skip
CASES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "serve": (
        ["--port", "9123", "-a", "builtin", "-a", "x.jsonl", "--token", "op", "--agent-token", "ag", "--agent-arena", "offline-*",
         "--failure-rate", "0.25", "--failure-kinds", "timeout", "--episode-ttl-s", "60", "--workers", "3", "--sandbox-backend", "process",
         "--call-timeout-s", "2.5", "--max-idle-processes", "1100", "--unsafe-sandbox", "--no-state-diffs", "--upstream", "time=python -m mcp_server_time", "--otel-spans",
         "--max-calls-per-episode", "9", "--public-url", "http://gym.example:8000", "--suite", "bfcl-mt", "--category", "base", "--no-live-pages"],
        {"port": 9123, "arenas": ["builtin", "x.jsonl"], "token": "op", "agent_tokens": ["ag"], "agent_arenas": ["offline-*"],
         "failure_rate": 0.25, "failure_kinds": ["timeout"], "episode_ttl_s": 60,
         "sandbox": {"workers": 3, "backend": "process", "call_timeout_s": 2.5, "max_idle_processes": 1100, "unsafe": True, "state_diffs": False},
         "upstreams": [{"name": "time", "command": "python -m mcp_server_time"}], "otel_spans": True, "max_calls_per_episode": 9,
         "public_url": "http://gym.example:8000", "suites": ["bfcl-mt"], "suite_categories": ["base"], "live_pages": False},
    ),
    "emulate": (
        ["docs/a.json", "docs/b.json", "--failure-rate", "0.5", "--port", "0", "--store", "runs/emu.jsonl", "--llm-base-url",
         "http://127.0.0.1:9/v1", "--llm-model", "m", "--llm-api-key-env", "KEY", "--call-timeout-s", "3.5"],
        {"tooldocs": ["docs/a.json", "docs/b.json"], "failure_rate": 0.5, "port": 0, "store": "runs/emu.jsonl",
         "emulator_llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "KEY"}, "sandbox": {"call_timeout_s": 3.5}},
    ),
    "episode": (
        ["airline-x", "--gym", "http://h:1", "--seed", "3", "--failure-rate", "0.1", "--token", "t", "--json"],
        {"arena_id": "airline-x", "gym": "http://h:1", "seed": 3, "failure_rate": 0.1, "token": "t", "as_json": True},
    ),
    "arenas list": (
        ["-a", "x.jsonl", "--domain", "airline", "--scenario-type", "single_hop", "--limit", "5", "--json"],
        {"arenas": ["x.jsonl"], "domain": "airline", "scenario_type": "single_hop", "limit": 5, "as_json": True},
    ),
    "arenas show": (["airline-x", "--arenas", "x.jsonl"], {"arena_id": "airline-x", "arenas": ["x.jsonl"]}),
    "arenas validate": (["a.jsonl", "b", "--workers", "3", "--unsafe-sandbox"], {"paths": ["a.jsonl", "b"], "sandbox": {"workers": 3, "unsafe": True}}),
    "eval": (
        ["--policy", "openai", "--model", "m", "--base-url", "http://x/v1", "--api-key-env", "K", "--arenas", "airline-*", "--concurrency", "4",
         "--episodes-per-arena", "2", "--gym", "http://g:1", "--token", "t", "--failure-rate", "0.1", "--max-turns", "3", "--max-tokens", "64",
         "--system-prompt", "Be terse.", "--seed", "7", "--out", "runs/e", "--suite", "bfcl-mt", "--category", "base,miss_func"],
        {"policy": "openai", "model": "m", "base_url": "http://x/v1", "api_key_env": "K", "arenas": "airline-*", "concurrency": 4,
         "episodes_per_arena": 2, "gym": "http://g:1", "token": "t", "failure_rate": 0.1, "max_turns": 3, "max_tokens": 64,
         "system_prompt": "Be terse.", "seed": 7, "out": "runs/e", "suite": "bfcl-mt", "category": "base,miss_func"},
    ),
    "suites install": (["bfcl-mt"], {"name": "bfcl-mt"}),
    "demo": (["--n", "10", "--out", "runs/d", "--concurrency", "2", "--seed", "1"], {"n": 10, "out": "runs/d", "concurrency": 2, "seed": 1}),
    "synth tools": (
        ["a.json", "b", "--out", "runs/t.jsonl", "--min-tools", "1", "--min-description-chars", "3"],
        {"sources": ["a.json", "b"], "out": "runs/t.jsonl", "quality": {"min_tools": 1, "min_description_chars": 3}},
    ),
    "synth chains": SFT_SYNTH,
    "synth tasks": SFT_SYNTH,
    "synth trajectories": SFT_SYNTH,
    "synth sft": SFT_SYNTH,
    "synth arenas": (
        ["--mode", "llm", "--n", "5", "--llm-base-url", "http://x/v1", "--model", "m", "--domain", "travel", "--question", "q?",
         "--language", "zh", "--concurrency", "2", "--out", "runs/a.jsonl", "--knowledge", "k.jsonl"],
        {"mode": "llm", "n": 5, "llm": {"base_url": "http://x/v1", "model": "m"}, "domains": ["travel"], "questions": ["q?"],
         "language": "zh", "concurrency": 2, "out": "runs/a.jsonl", "knowledge": "k.jsonl"},
    ),
    "train sft": (
        ["--model", "tiny", "--data", "d.jsonl", "--out", "runs/x", "--max-steps", "3", "--batch-size", "2", "--learning-rate", "0.001",
         "--lora-rank", "4", "--no-gradient-checkpointing", "--resume"],
        {"model": "tiny", "data": "d.jsonl", "out": "runs/x", "max_steps": 3, "batch_size": 2, "learning_rate": 0.001, "lora_rank": 4,
         "gradient_checkpointing": False, "resume": True},
    ),
    "train grpo": (
        ["--model", "tiny", "-a", "x.jsonl", "--arena-filter", "offline-*", "--gym", "http://g:1", "--token", "t", "--max-steps", "2",
         "--num-generations", "2", "--distractors", "2,0,1", "--no-abf", "--system-prompt", "S", "--failure-rate", "0.1",
         "--vllm-server", "http://v:8000"],
        {"model": "tiny", "arenas": ["x.jsonl"], "arena_filter": "offline-*", "gym": "http://g:1", "token": "t", "max_steps": 2,
         "num_generations": 2, "distractors": {"high": 2, "medium": 0, "low": 1}, "abf": False, "system_prompt": "S",
         "failure_rate": 0.1, "vllm_server": "http://v:8000"},
    ),
    "view": (["runs/a", "runs/b", "--host", "127.0.0.2", "--port", "8200"], {"runs": ["runs/a", "runs/b"], "host": "127.0.0.2", "port": 8200}),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for var in ("ASTRA_GYM_TOKEN", "ASTRA_GYM_UNSAFE_SANDBOX"):
        monkeypatch.delenv(var, raising=False)


def invoke(monkeypatch, name: str, args: list[str], config: dict[str, Any] | str | None = None, tmp_path: Path | None = None):
    """Run `astra-gym NAME ARGS [--config FILE]` with the command's run swapped for a recorder."""
    seen: list[BaseModel] = []
    monkeypatch.setattr(COMMANDS[name], "run", seen.append)
    if config is not None:
        assert tmp_path is not None
        path = tmp_path / "run.yaml"
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        args = [*args, "--config", str(path)]
    return CliRunner().invoke(app, [*name.split(), *args]), seen


def leaves(group: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(group, "commands"):  # a group (typer vendors its own click)
        return {k: v for name, sub in group.commands.items() for k, v in leaves(sub, f"{prefix} {name}".strip()).items()}
    return {prefix: group}


def test_every_command_is_generated_from_its_model_and_takes_config():
    commands = leaves(get_command(app))
    assert set(commands) == VERBS == set(COMMANDS) == set(CASES)
    for name, cmd in commands.items():
        assert any("--config" in p.opts for p in cmd.params), name
        spec = COMMANDS[name]
        for field in spec.model.model_fields.values():
            assert field.description, f"{name}: {spec.model.__name__} has a field without help"
        assert len(cmd.params) == len(spec.options) + 1  # one parameter per generated option, plus --config


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_and_flags_load_the_same_run(name, monkeypatch, tmp_path):
    argv, data = CASES[name]
    by_flags, seen_flags = invoke(monkeypatch, name, argv)
    by_yaml, seen_yaml = invoke(monkeypatch, name, [], data, tmp_path)
    assert by_flags.exit_code == 0 and by_yaml.exit_code == 0, by_flags.output + by_yaml.output
    [from_flags], [from_yaml] = seen_flags, seen_yaml
    assert type(from_flags) is COMMANDS[name].model and from_flags == from_yaml
    for key in data:  # the case sets values a default would not give, so equality says something
        field = COMMANDS[name].model.model_fields[key]
        if not field.is_required():
            assert getattr(from_yaml, key) != field.get_default(call_default_factory=True), (name, key)


def test_flags_override_yaml_and_yaml_overrides_defaults(monkeypatch, tmp_path):
    data = {"port": 9100, "arenas": ["a.jsonl"], "failure_rate": 0.3, "sandbox": {"workers": 3, "call_timeout_s": 2.0}}
    result, [config] = invoke(monkeypatch, "serve", ["--port", "9200", "--workers", "5", "-a", "b.jsonl"], data, tmp_path)
    assert result.exit_code == 0, result.output
    assert (config.port, config.arenas, config.sandbox.workers) == (9200, ["b.jsonl"], 5)  # the flags
    assert (config.failure_rate, config.sandbox.call_timeout_s) == (0.3, 2.0)  # the file, beside them in the same mapping
    assert (config.host, config.episode_ttl_s) == ("127.0.0.1", 1800.0)  # the defaults


def test_an_environment_fallback_sits_below_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRA_GYM_TOKEN", "from-env")
    assert invoke(monkeypatch, "eval", [])[1][0].token == "from-env"
    assert invoke(monkeypatch, "eval", [], {"token": "from-yaml"}, tmp_path)[1][0].token == "from-yaml"
    assert invoke(monkeypatch, "eval", ["--token", "from-flag"], {"token": "from-yaml"}, tmp_path)[1][0].token == "from-flag"


BAD = [
    ("serve", "prot: 1\n", [], "prot: unknown key"),
    ("serve", "sandbox: {wrokers: 2}\n", [], "sandbox.wrokers: unknown key"),
    ("serve", "port: abc\n", [], "port (--port): Input should be a valid integer"),
    ("train grpo", "model: tiny\nmax_steps: [1]\n", [], "max_steps (--max-steps): Input should be a valid integer"),
    ("arenas list", "limit: 0\n", [], "limit (--limit): Input should be greater than or equal to 1"),
    ("eval", "- policy\n- oracle\n", [], "must be a YAML mapping of field names to values, not a list"),
    ("eval", "just a string\n", [], "not a str"),
    ("serve", "port: [1\n", [], "not valid YAML"),
    ("serve", "sandbox: 3\n", ["--workers", "2"], "sandbox: must be a mapping to set sandbox.workers from a flag"),
    ("train sft", "data: d.jsonl\n", [], "model (--model): Field required"),
    ("synth sft", "out: runs/s\n", [], "llm (--llm-base-url, --model, --api-key-env): Field required"),
    ("synth arenas", "mode: llm\n", [], "--mode llm needs --llm-base-url and --model"),
    ("train grpo", "model: tiny\n", ["--distractors", "1,2"], "--distractors: '1,2': expected three counts"),
    ("serve", "", ["--upstream", "nonsense"], "--upstream: upstream 'nonsense': expected NAME=COMMAND or NAME=URL"),
    ("serve", "agent_tokens: [a]\n", [], "agent_tokens need an operator token"),
]


@pytest.mark.parametrize(("name", "text", "argv", "problem"), BAD, ids=[b[3][:40] for b in BAD])
def test_a_bad_config_exits_2_naming_the_problem(name, text, argv, problem, monkeypatch, tmp_path):
    result, seen = invoke(monkeypatch, name, argv, text, tmp_path)
    assert result.exit_code == 2 and not seen, result.output
    assert problem in result.stderr and f"astra-gym {name}:" in result.stderr


def test_a_missing_config_file_exits_2(monkeypatch, tmp_path):
    result, seen = invoke(monkeypatch, "demo", ["--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and not seen
    assert f"config file {tmp_path / 'nope.yaml'}: no such file" in result.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_unknown_key_is_an_error_on_every_command(name, monkeypatch, tmp_path):
    result, seen = invoke(monkeypatch, name, [], {**CASES[name][1], "bogus_key": 1}, tmp_path)
    assert result.exit_code == 2 and not seen
    assert "bogus_key: unknown key" in result.stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_help_shows_every_field_description(name, monkeypatch):
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 500)  # one line per option: descriptions stay whole
    result = CliRunner().invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert "--config" in text
    for option in COMMANDS[name].options:
        assert " ".join(option.info.description.split()) in text, (name, option.path)
        assert option.label in text


def test_a_command_runs_from_its_config_file(tmp_path):
    """The cheapest real run, through the installed console script: the file's fields reach the command."""
    path = tmp_path / "list.yaml"
    path.write_text("arenas: [builtin]\nlimit: 2\nas_json: true\ndomain: clinic\n")
    run = subprocess.run([str(Path(sys.executable).with_name("astra-gym")), "arenas", "list", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(rows) == 2 and {r["domain"] for r in rows} == {"clinic"}


def test_a_command_cannot_be_registered_with_a_flag_that_would_lie():
    """The mechanism refuses at import time what would make help or flags wrong: a field with no help, a
    flag declared twice, a flag for a field that does not exist."""
    import typer
    from pydantic import ConfigDict, Field

    from gym_server.cli.options import Flag, command

    class Undocumented(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 1

    class Documented(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = Field(default=1, description="How many.")
        m: int = Field(default=1, description="How many more.")

    group = typer.Typer()
    with pytest.raises(TypeError, match="Undocumented.n has no description"):
        command(group, "x", Undocumented)(print)
    with pytest.raises(TypeError, match="flag --n is declared twice"):
        command(group, "x", Documented, {"m": Flag("--n")})(print)
    with pytest.raises(TypeError, match="Documented has no field 'k'"):
        command(group, "x", Documented, {"k": Flag("--k")})(print)
    assert "x" not in COMMANDS


def test_the_command_line_starts_without_the_mcp_client_torch_or_trl():
    """Every command's flags come from its config model: those live in light modules, so `astra-gym --help` (and
    every command's start) does not pay for importing the MCP client, torch or TRL."""
    import subprocess
    import sys

    heavy = ("mcp", "torch", "trl", "transformers")
    code = f"import sys, gym_server.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
