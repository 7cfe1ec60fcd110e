"""Argument validation: the compiled fast path never accepts what jsonschema rejects, and it is the path taken."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from gym_server.builtin import builtin_arenas
from gym_server.schemas import _certain_check, compile_validator

HANDWRITTEN = [
    {"type": "object", "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 5}}, "required": ["city"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10}}, "additionalProperties": False},
    {"type": "object", "properties": {"x": {"type": ["number", "null"], "exclusiveMinimum": -1, "maximum": 1.5}}},
    {"type": "object", "properties": {"unit": {"enum": ["c", "f", 1, None, True]}, "flag": {"const": False}}},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}}},
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1, "maxProperties": 2},
    {"type": "object", "properties": {"inner": {"type": "object", "properties": {"k": {"type": "boolean"}}, "required": ["k"]}}},
    {"type": "object", "properties": {"any": {}, "t": True, "d": {"description": "annotations only", "default": 3}}},
]


KEYS = ["city", "n", "x", "unit", "flag", "tags", "inner", "k", "any", "t", "d", "extra"]


def random_value(rng: random.Random, keys: list[str], depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "a", "ab", "abcdef", "c", "f", "k", "city", "é"])
    if kind == "int":
        return rng.choice([-2, -1, 0, 1, 3, 9, 10, 11, 1 << 40])
    if kind == "float":
        return rng.choice([-1.0, -0.5, 0.0, 1.0, 1.5, 1.6, 9.99, 10.0, float("inf")])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, keys, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(keys): random_value(rng, keys, depth + 1) for _ in range(rng.randrange(5))}


def fitting_guess(rng: random.Random, schema: Any, keys: list[str]) -> Any:
    """Mostly well-typed values for `schema`, so the accepting side gets exercised too."""
    if not isinstance(schema, dict) or rng.random() < 0.2:
        return random_value(rng, keys)
    kind = schema.get("type")
    kind = rng.choice(kind) if isinstance(kind, list) else kind
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        value = {k: fitting_guess(rng, sub, keys) for k, sub in props.items() if k in schema.get("required", []) or rng.random() < 0.5}
        if rng.random() < 0.2:
            value[rng.choice(keys)] = random_value(rng, keys)
        return value
    if kind == "array":
        return [fitting_guess(rng, schema.get("items"), keys) for _ in range(rng.randrange(4))]
    pool = {"string": ["", "a", "Paris", "2026-11-23", "abcdefghijklmnop"], "integer": [-1, 0, 1, 2, 5, 100], "number": [0, 0.5, 2, 99.5],
            "boolean": [True, False], "null": [None]}.get(kind)
    return rng.choice(pool) if pool else random_value(rng, keys)


def builtin_schemas() -> list[dict[str, Any]]:
    distinct = {json.dumps(tool.input_schema, sort_keys=True) for arena in builtin_arenas() for tool in arena.tools}
    return [json.loads(schema) for schema in sorted(distinct)]


@pytest.mark.parametrize("schema", HANDWRITTEN + builtin_schemas())
def test_the_fast_path_never_accepts_what_jsonschema_rejects(schema):
    checker = compile_validator(schema)
    assert checker._accepts is not None, "every keyword here has a fast path"
    reference = jsonschema.Draft202012Validator(schema)
    rng = random.Random(7)
    keys = KEYS + list(schema.get("properties", {}))
    accepted = 0
    for i in range(1500):
        value = random_value(rng, keys) if i % 2 else fitting_guess(rng, schema, keys)
        if checker._accepts(value):
            accepted += 1
            assert reference.is_valid(value), value
        assert (checker.first_error(value) is None) == reference.is_valid(value), value
    assert accepted  # some random values fit: the comparison covered the accepting side


def test_every_builtin_gold_call_takes_the_fast_path():
    for arena in builtin_arenas():
        schemas = {tool.name: tool.input_schema for tool in arena.tools}
        for sub in arena.subtasks:
            checker = compile_validator(schemas[sub.gold_call.tool])
            assert checker._accepts is not None and checker._accepts(sub.gold_call.arguments), (arena.id, sub.id)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}},
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"type": "string"}}},
        {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
        {"type": "object", "properties": {"e": {"enum": [[1, 2], {"a": 1}]}}},
    ],
)
def test_keywords_without_a_fast_path_leave_everything_to_jsonschema(schema):
    assert compile_validator(schema)._accepts is None


def test_older_draft_forms_have_no_fast_path():
    """Draft 4's boolean exclusiveMinimum and draft 7's tuple `items` mean something else than their 2020-12
    namesakes; the fast path must not read them as if they were."""
    assert _certain_check({"type": "number", "minimum": 0, "exclusiveMinimum": True}) is None
    assert _certain_check({"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}) is None
    assert _certain_check({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}) is None


def test_fast_path_doubts_go_to_jsonschema_with_its_message():
    checker = compile_validator({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert not checker._accepts({"n": 2.0})  # an integral float: jsonschema decides (and accepts)
    assert checker.first_error({"n": 2.0}) is None
    assert checker.first_error({"n": True}) == "n: True is not of type 'integer'"
    assert checker.first_error({}) == "'n' is a required property"
