"""JSON Schema validation of tool arguments, compiled once per tool (the low-level MCP server validates none)."""

from __future__ import annotations

import json
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

    def first_error(self, arguments: Any) -> str | None:
        """The most relevant violation, phrased for an agent to act on, or None when the arguments fit."""
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
    return ArgumentValidator(cls(schema, format_checker=cls.FORMAT_CHECKER))
