"""JSON Schema validation of tool arguments, compiled once per tool (the low-level MCP server validates none)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError as _JSONSchemaError
from jsonschema.validators import validator_for


class SchemaError(ValueError):
    """A tool's schema is not a valid JSON Schema."""


@dataclass(frozen=True, slots=True)
class ArgumentValidator:
    _validator: Any
    _accepts: Callable[[Any], bool] | None = None
    """A compiled check that answers True only for arguments that certainly fit (see `_certain_check`); it
    runs on every tool call, where `jsonschema` costs a few hundred microseconds even for arguments that fit."""

    def first_error(self, arguments: Any) -> str | None:
        """The most relevant violation, phrased for an agent to act on, or None when the arguments fit."""
        if self._accepts is not None and self._accepts(arguments):
            return None
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where + ': ' if where else ''}{error.message}"


def compile_validator(schema: dict[str, Any]) -> ArgumentValidator:
    """Compiled once per distinct schema (arenas of one world share theirs), then reused."""
    return _compile(json.dumps(schema, sort_keys=True))


@lru_cache(maxsize=4096)
def _compile(schema_json: str) -> ArgumentValidator:
    schema = json.loads(schema_json)
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except _JSONSchemaError as exc:
        raise SchemaError(exc.message) from None
    return ArgumentValidator(cls(schema, format_checker=cls.FORMAT_CHECKER), _certain_check(schema))


# -- the fast path ---------------------------------------------------------------------------------------------
# Tool schemas are nearly always flat objects of typed properties. For those keywords we compile a predicate that
# is sound in one direction: True means `jsonschema` would accept the instance too. Anything it does not model
# (formats, patterns, references, combinators, ...) leaves the schema without a fast path, and any doubt (a
# float where an integer is asked for) answers False, which hands the verdict and the message to `jsonschema`.

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"})
_IS_TYPE: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}
_SCALARS = (str, int, float, bool, type(None))
_is_number, _is_str, _is_list, _is_dict = _IS_TYPE["number"], _IS_TYPE["string"], _IS_TYPE["array"], _IS_TYPE["object"]


def _certain_check(schema: Any) -> Callable[[Any], bool] | None:
    if schema is True or schema == {}:
        return lambda v: True
    if not isinstance(schema, dict):
        return None
    keywords = set(schema) - _ANNOTATIONS
    if not keywords <= _FAST_KEYWORDS.keys():
        return None
    checks: list[Callable[[Any], bool]] = []
    for keyword in keywords:
        check = _FAST_KEYWORDS[keyword](schema[keyword], schema)
        if check is None:
            return None
        checks.append(check)
    return lambda v: all(check(v) for check in checks)


def _type(value: Any, _: dict[str, Any]) -> Callable[[Any], bool] | None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or any(n not in _IS_TYPE for n in names):
        return None
    tests = [_IS_TYPE[n] for n in names]
    return lambda v: any(t(v) for t in tests)


def _enum(value: Any, _: dict[str, Any]) -> Callable[[Any], bool] | None:
    if not isinstance(value, list) or not all(isinstance(e, _SCALARS) for e in value):
        return None
    members = [(type(e), e) for e in value]
    return lambda v: any(type(v) is t and v == e for t, e in members)


def _const(value: Any, schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    return _enum([value], schema)


def _properties(value: Any, _: dict[str, Any]) -> Callable[[Any], bool] | None:
    if not isinstance(value, dict):
        return None
    subs = {name: _certain_check(sub) for name, sub in value.items()}
    if any(check is None for check in subs.values()):
        return None
    return lambda v: type(v) is not dict or all(check(v[k]) for k, check in subs.items() if k in v)  # type: ignore[misc]


def _required(value: Any, _: dict[str, Any]) -> Callable[[Any], bool] | None:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        return None
    return lambda v: type(v) is not dict or all(k in v for k in value)


def _additional_properties(value: Any, schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    declared = set(schema.get("properties") or {})
    if value is True:
        return lambda v: True
    if value is False:
        return lambda v: type(v) is not dict or all(k in declared for k in v)
    extra = _certain_check(value)
    if extra is None:
        return None
    return lambda v: type(v) is not dict or all(extra(x) for k, x in v.items() if k not in declared)


def _items(value: Any, _: dict[str, Any]) -> Callable[[Any], bool] | None:
    each = _certain_check(value) if isinstance(value, dict) or value is True else None  # a list is tuple validation
    if each is None:
        return None
    return lambda v: type(v) is not list or all(each(x) for x in v)


def _bound(test: Callable[[Any, Any], bool], applies: Callable[[Any], bool]) -> Callable[[Any, dict[str, Any]], Callable[[Any], bool] | None]:
    def build(limit: Any, _: dict[str, Any]) -> Callable[[Any], bool] | None:
        if not _is_number(limit):
            return None  # draft 4's boolean exclusiveMinimum, or garbage: leave it to jsonschema
        return lambda v: not applies(v) or test(v, limit)

    return build


_FAST_KEYWORDS: dict[str, Callable[[Any, dict[str, Any]], Callable[[Any], bool] | None]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional_properties,
    "items": _items,
    "minimum": _bound(lambda v, n: v >= n, _is_number),
    "maximum": _bound(lambda v, n: v <= n, _is_number),
    "exclusiveMinimum": _bound(lambda v, n: v > n, _is_number),
    "exclusiveMaximum": _bound(lambda v, n: v < n, _is_number),
    "minLength": _bound(lambda v, n: len(v) >= n, _is_str),
    "maxLength": _bound(lambda v, n: len(v) <= n, _is_str),
    "minItems": _bound(lambda v, n: len(v) >= n, _is_list),
    "maxItems": _bound(lambda v, n: len(v) <= n, _is_list),
    "minProperties": _bound(lambda v, n: len(v) >= n, _is_dict),
    "maxProperties": _bound(lambda v, n: len(v) <= n, _is_dict),
}
