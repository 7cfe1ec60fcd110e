"""Tool documents normalize from BFCL, OpenAI, OpenAPI and live MCP servers; bad docs are dropped with reasons."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from synth.tooldocs import QualityRules, detect_and_load, from_mcp, from_openai, quality_filter

FIXTURES = Path(__file__).parent / "fixtures"
BFCL = sorted((FIXTURES / "bfcl").glob("*.json"))


def _types(schema):
    if isinstance(schema, dict):
        if "type" in schema:
            yield schema["type"]
        for v in schema.values():
            yield from _types(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _types(v)


def test_all_eight_bfcl_suites_normalize_and_compile():
    assert len(BFCL) == 8
    servers = []
    for path in BFCL:
        docs, rejected = detect_and_load(path)
        assert rejected == [], rejected
        servers.extend(docs)
    kept, report = quality_filter(servers)
    assert report.servers_kept == 8 and report.tools_in == 128
    assert report.tools_kept == 128, report.rejected
    by_name = {s.name: s for s in kept}
    ticket = {t.name: t for t in by_name["ticket_api"].tools}
    assert ticket["create_ticket"].input_schema["type"] == "object"
    assert ticket["create_ticket"].output_schema["properties"]["id"]["type"] == "integer"
    for server in kept:
        for tool in server.tools:
            assert not {"dict", "float", "tuple", "any"} & {t for t in _types(tool.input_schema) if isinstance(t, str)}


def test_openapi_document_becomes_a_server():
    [server], rejected = detect_and_load(FIXTURES / "petstore_openapi.json")
    assert not rejected and server.name == "pet_store"
    tools = {t.name: t for t in server.tools}
    assert set(tools) == {"list_pets", "create_pet", "get_pet", "delete_pet"}
    assert tools["create_pet"].input_schema["required"] == ["name", "species"]
    assert tools["get_pet"].input_schema["required"] == ["pet_id"]
    assert tools["get_pet"].output_schema["properties"]["name"]["type"] == "string"  # $ref resolved
    assert tools["list_pets"].output_schema["properties"]["result"]["type"] == "array"


def test_openai_tools_json_and_bad_docs_in_one_batch(tmp_path):
    batch = [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city today.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_forecast", "description": "Forecast for a city, n days.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
        {"type": "function", "function": {"description": "no name here", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "broken_schema", "description": "A tool whose schema is broken.", "parameters": {"type": "object", "properties": {"x": {"type": "strnig"}}}}},
        {"type": "function", "function": {"name": "get_weather", "description": "A duplicate of the first tool.", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "terse", "description": "x", "parameters": {"type": "object"}}},
    ]  # fmt: skip
    path = tmp_path / "weather.json"
    path.write_text(json.dumps(batch))
    docs, rejected = detect_and_load(path)
    assert [r.reason for r in rejected] == ["tool has no name"]
    kept, report = quality_filter(docs)
    assert [t.name for t in kept[0].tools] == ["get_weather", "get_forecast"]
    reasons = {r.tool: r.reason for r in report.rejected}
    assert "does not compile" in reasons["broken_schema"] and "duplicate" in reasons["get_weather"] and "description" in reasons["terse"]
    lonely, _ = from_openai(batch[:1], "lonely")
    _, small = quality_filter([lonely], QualityRules(min_tools=2))
    assert small.servers_kept == 0 and "only 1 usable tools" in small.rejected[0].reason


async def test_live_stdio_mcp_server_normalizes():
    server = await from_mcp(f"{sys.executable} -m mcp_server_time", name="time")
    assert {t.name for t in server.tools} >= {"get_current_time", "convert_time"}
    kept, report = quality_filter([server])
    assert report.servers_kept == 1


def test_cli_synth_tools_writes_servers_and_a_report(tmp_path):
    import subprocess

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = tmp_path / "docs.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "gym_server.cli", "synth", "tools", str(FIXTURES / "bfcl"), str(FIXTURES / "petstore_openapi.json"),
         str(bad), "http://127.0.0.1:9/mcp", "--out", str(out)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 9 and {json.loads(x)["name"] for x in lines} >= {"ticket_api", "pet_store"}
    report = json.loads((tmp_path / "docs.report.json").read_text())
    reasons = " ".join(r["reason"] for r in report["rejected"])
    assert "cannot read" in reasons and "cannot list tools" in reasons
