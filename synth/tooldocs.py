"""Tool documents from anywhere, normalized into one model (`ServerDoc`) and filtered for quality.

Sources: a live MCP server (HTTP URL or stdio command: `list_tools`), OpenAI function/tool JSON, OpenAPI 3
documents, and BFCL's dialect (`"type": "dict"`, `float`, `tuple`, a `response` schema). Every input
schema becomes JSON Schema 2020-12 that compiles; a tool or server that cannot be fixed is dropped with a
reason in the `FilterReport`, and the rest of the batch still loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gym_server.models import ServerDoc, ToolSpec
from gym_server.schemas import SchemaError, compile_validator
from synth.models import FilterReport, Rejection

_TYPE_MAP = {"dict": "object", "float": "number", "double": "number", "int": "integer", "long": "integer",
             "tuple": "array", "list": "array", "str": "string", "bool": "boolean"}  # fmt: skip
_NAME = re.compile(r"[^A-Za-z0-9_\-]")


class QualityRules(BaseModel):
    """The paper's filter: enough tools, clear descriptions, schemas that compile."""

    model_config = ConfigDict(extra="forbid")

    min_tools: int = Field(default=2, ge=0, description="Servers with fewer usable tools are dropped.")
    min_description_chars: int = Field(default=12, ge=0, description="Tools with shorter descriptions are dropped.")
    max_tools: int = Field(default=128, ge=1, description="Servers with more tools are dropped.")


def normalize_schema(schema: Any) -> dict[str, Any]:
    """BFCL/OpenAI/OpenAPI-flavoured schemas -> JSON Schema 2020-12 (types mapped, `optional` dropped)."""
    if not isinstance(schema, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if isinstance(value, list):
                out["type"] = [_TYPE_MAP.get(v, v) for v in value if v != "any"] or None
            elif value == "any":
                continue
            else:
                out["type"] = _TYPE_MAP.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {k: normalize_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = normalize_schema(value)
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            out[key] = [normalize_schema(v) for v in value]
        elif key in ("optional", "nullable", "example", "format_hint"):
            continue
        else:
            out[key] = value
    if out.get("type") is None:
        out.pop("type", None)
    if out.get("type") == "object":
        props = out.setdefault("properties", {})
        required = out.get("required")
        if isinstance(required, list):
            out["required"] = [r for r in required if r in props]
            if not out["required"]:
                del out["required"]
    return out


def _tool(name: Any, description: Any, parameters: Any, response: Any = None) -> ToolSpec:
    input_schema = normalize_schema(parameters) if parameters else {"type": "object", "properties": {}}
    if input_schema.get("type") != "object":
        input_schema = {"type": "object", "properties": {}} if not input_schema else input_schema
    output = normalize_schema(response) if isinstance(response, dict) and response else None
    return ToolSpec.model_validate(
        {"name": name, "description": description or "", "inputSchema": input_schema, "outputSchema": output}
    )


def from_openai(data: Any, server: str, description: str = "") -> tuple[ServerDoc, list[Rejection]]:
    """OpenAI `tools` (`{"type": "function", "function": {...}}`) or bare function objects; BFCL is this plus
    its dialect, handled by `normalize_schema`."""
    items = data if isinstance(data, list) else data.get("tools", data.get("functions", [data])) if isinstance(data, dict) else []
    tools, rejected = [], []
    for item in items:
        fn = item.get("function", item) if isinstance(item, dict) else {}
        name = fn.get("name") if isinstance(fn, dict) else None
        try:
            if not name:
                raise ValueError("tool has no name")
            tools.append(_tool(name, fn.get("description"), fn.get("parameters"), fn.get("response")))
        except (ValueError, ValidationError) as exc:
            rejected.append(Rejection(server=server, tool=name, reason=_reason(exc)))
    return ServerDoc(name=server, description=description, tools=tools), rejected


def _resolve(doc: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """Inline local `$ref`s (`#/components/...`) of an OpenAPI document, to a bounded depth (cycles stop)."""
    if depth > 12:
        return {}
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return _resolve(doc, target, depth + 1)
        return {k: _resolve(doc, v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(doc, v, depth + 1) for v in node]
    return node


def from_openapi(doc: dict[str, Any], server: str | None = None) -> tuple[ServerDoc, list[Rejection]]:
    info = doc.get("info", {})
    name = server or _NAME.sub("_", str(info.get("title", "openapi")).strip().lower())[:64] or "openapi"
    tools, rejected = [], []
    for path, item in (doc.get("paths") or {}).items():
        for method, op in (item or {}).items():
            if method.lower() not in ("get", "post", "put", "patch", "delete") or not isinstance(op, dict):
                continue
            op = _resolve(doc, op)
            op_name = op.get("operationId") or _NAME.sub("_", f"{method}_{path.strip('/')}")
            try:
                props: dict[str, Any] = {}
                required: list[str] = []
                for param in list(item.get("parameters", [])) + list(op.get("parameters", [])):
                    param = _resolve(doc, param)
                    if not isinstance(param, dict) or "name" not in param:
                        continue
                    props[param["name"]] = {**param.get("schema", {}), **({"description": param["description"]} if param.get("description") else {})}
                    if param.get("required") or param.get("in") == "path":
                        required.append(param["name"])
                body = (((op.get("requestBody") or {}).get("content") or {}).get("application/json") or {}).get("schema")
                if isinstance(body, dict):
                    if body.get("type") == "object" or "properties" in body:
                        props.update(body.get("properties", {}))
                        required.extend(body.get("required", []))
                    else:
                        props["body"] = body
                        required.append("body")
                responses = op.get("responses") or {}
                ok = next((responses[c] for c in ("200", "201", 200, 201) if c in responses), {})
                out = (((ok or {}).get("content") or {}).get("application/json") or {}).get("schema")
                if isinstance(out, dict) and out.get("type") != "object":
                    out = {"type": "object", "properties": {"result": out}}
                description = op.get("description") or op.get("summary") or ""
                tools.append(_tool(op_name, description, {"type": "object", "properties": props, "required": required}, out))
            except (ValueError, ValidationError) as exc:
                rejected.append(Rejection(server=name, tool=str(op_name), reason=_reason(exc)))
    return ServerDoc(name=name, title=info.get("title"), description=info.get("description", ""), tools=tools), rejected


async def from_mcp(target: str, http: Any = None, name: str | None = None) -> ServerDoc:
    """A live MCP server: an http(s) URL, or a stdio command line ("python -m mcp_server_time")."""
    import shlex

    from clients.toolbox import MCPToolbox

    if target.startswith(("http://", "https://")):
        box = MCPToolbox.http_endpoint(target, http) if http is not None else MCPToolbox(target)
    else:
        argv = shlex.split(target)
        box = MCPToolbox.stdio(argv[0], argv[1:])
    async with box:
        tools = [ToolSpec.model_validate(t.model_dump(by_alias=True, exclude_none=True, include={"name", "description", "input_schema", "output_schema"})) for t in box.tools]
    return ServerDoc(name=name or _NAME.sub("_", target.split("/")[-1] or target)[:64], tools=tools)


def detect_and_load(path: Path) -> tuple[list[ServerDoc], list[Rejection]]:
    """One file: BFCL (one tool per line), OpenAI tools JSON, an OpenAPI 3 document, or normalized ServerDoc JSONL."""
    text = path.read_text(encoding="utf-8")
    server = path.stem
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if lines and all(isinstance(x, dict) and "tools" in x and "name" in x for x in lines):
            return [ServerDoc.model_validate(x) for x in lines], []
        doc, rejected = from_openai(lines, server)
        return [doc], rejected
    if isinstance(data, dict) and "openapi" in data:
        doc, rejected = from_openapi(data)
        return [doc], rejected
    if isinstance(data, dict) and "tools" in data and "name" in data and isinstance(data["tools"], list):
        try:
            return [ServerDoc.model_validate(data)], []
        except ValidationError:
            doc, rejected = from_openai(data["tools"], str(data["name"]), str(data.get("description", "")))
            return [doc], rejected
    doc, rejected = from_openai(data, server)
    return [doc], rejected


def quality_filter(servers: list[ServerDoc], rules: QualityRules | None = None, report: FilterReport | None = None) -> tuple[list[ServerDoc], FilterReport]:
    rules = rules or QualityRules()
    report = report or FilterReport()
    kept: list[ServerDoc] = []
    for server in servers:
        report.servers_in += 1
        report.tools_in += len(server.tools)
        seen: set[str] = set()
        good: list[ToolSpec] = []
        for tool in server.tools:
            problem = None
            if tool.name in seen:
                problem = "duplicate tool name"
            elif len(tool.description.strip()) < rules.min_description_chars:
                problem = f"description shorter than {rules.min_description_chars} characters"
            else:
                try:
                    compile_validator(tool.input_schema)
                    if tool.output_schema:
                        compile_validator(tool.output_schema)
                except SchemaError as exc:
                    problem = f"schema does not compile: {exc}"
            seen.add(tool.name)
            if problem:
                report.rejected.append(Rejection(server=server.name, tool=tool.name, reason=problem))
            else:
                good.append(tool)
        if len(good) < rules.min_tools:
            report.rejected.append(Rejection(server=server.name, reason=f"only {len(good)} usable tools (minimum {rules.min_tools})"))
            continue
        good = good[: rules.max_tools]
        report.servers_kept += 1
        report.tools_kept += len(good)
        kept.append(server.model_copy(update={"tools": good}))
    return kept, report


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc)


async def collect(sources: list[str], rules: QualityRules | None = None) -> tuple[list[ServerDoc], FilterReport]:
    """Files, directories (every .json/.jsonl in them), MCP URLs and `stdio:COMMAND` sources, normalized and filtered."""
    servers: list[ServerDoc] = []
    report = FilterReport()
    for source in sources:
        if source.startswith(("http://", "https://", "stdio:")):
            target = source.removeprefix("stdio:")
            try:
                servers.append(await from_mcp(target))
            except Exception as exc:  # a dead server is reported, the batch goes on
                report.rejected.append(Rejection(server=source, reason=f"cannot list tools: {type(exc).__name__}: {exc}"))
            continue
        path = Path(source)
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
        for file in files:
            try:
                docs, rejected = detect_and_load(file)
            except (OSError, ValueError, ValidationError) as exc:
                report.rejected.append(Rejection(server=str(file), reason=f"cannot read: {_reason(exc) if isinstance(exc, ValidationError) else exc}"))
                continue
            servers.extend(docs)
            report.rejected.extend(rejected)
    return quality_filter(servers, rules, report)
