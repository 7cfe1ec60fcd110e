"""One mechanism for every command's options: the command's pydantic model is its config, each field's
description is its help, and the flags are generated from the fields. `--config FILE.yaml` holds the same
fields; a flag given on the command line overrides the file, the file overrides an `envvar` fallback, and
that overrides the field's default. Unknown keys, wrong types and unreadable files are errors (exit 2)
that name the field, never ignored.

Every field whose type a flag can carry (str, int, float, bool, Path, an Enum or Literal, a list of those,
optionally None) gets `--field-name` (bools: `--field-name/--no-field-name`); other fields (nested models,
dicts) are set from YAML. `flags` names only what differs from that rule, keyed by the field's dotted path:
another flag name or a short one, a positional argument, a field inside a nested model
(`"sandbox.workers": Flag("--workers")`), a parser for a flag whose text is not the field's YAML form, an
environment variable read when neither the flag nor the file sets the field.
"""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gym_server.cli.root import fail

SCALARS = (str, int, float, bool, Path)
CONFIG_HELP = "YAML file with this command's fields (the flags' names with underscores); flags given here override it."


class ConfigError(ValueError):
    """A run config that cannot be loaded: the message names the file or field and what is wrong."""


class Flag:
    """How one field differs from its generated flag; see the module docstring."""

    def __init__(
        self, *decls: str, argument: bool = False, parse: Callable[[str], Any] | None = None, envvar: str | None = None
    ) -> None:  # fmt: skip
        self.decls = decls
        self.argument = argument
        self.parse = parse
        self.envvar = envvar


@dataclass
class Option:
    """One generated flag or argument: where its value goes in the config and how its text becomes that value."""

    path: str
    param: str
    flag: Flag
    info: FieldInfo
    many: bool

    def value(self, given: Any) -> Any:
        if self.flag.parse is None:
            return list(given) if self.many else given
        try:
            return [self.flag.parse(v) for v in given] if self.many else self.flag.parse(given)
        except ValueError as exc:
            raise ConfigError(f"{self.label}: {exc}") from None

    @property
    def label(self) -> str:
        return self.param.upper() if self.flag.argument else self.flag.decls[0].split("/")[0]


@dataclass
class Command:
    """A registered command: its model, its options, and what runs a loaded config (tests swap `run`)."""

    name: str
    model: type[BaseModel]
    options: list[Option]
    run: Callable[[Any], None]
    envvars: dict[str, str] = field(default_factory=dict)

    def load(self, path: Path | None, given: Mapping[str, Any] = {}) -> Any:
        return load_config(self.model, path, given, self.envvars, self.options)


COMMANDS: dict[str, Command] = {}
"""Every command by its full name ("serve", "synth arenas"), in registration order."""


def command(
    group: typer.Typer, name: str, model: type[BaseModel], flags: Mapping[str, Flag] = {}, help: str | None = None
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:  # fmt: skip
    """Register `fn(config)` as `astra-gym NAME` with one option per field of `model` (see the module docstring)."""

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        options = _options(model, flags)
        spec = Command(name, model, options, fn, {o.path: o.flag.envvar for o in options if o.flag.envvar})
        COMMANDS[name] = spec
        by_param = {o.param: o for o in options}

        def callback(**kwargs: Any) -> None:
            path = kwargs.pop("config")
            try:
                given = {by_param[p].path: by_param[p].value(v) for p, v in kwargs.items() if v is not None and v != () and v != []}
                config = spec.load(path, given)
            except ConfigError as exc:
                fail(f"astra-gym {name}: {exc}")
            spec.run(config)

        params = [_parameter(o) for o in options if o.flag.argument] + [_parameter(o) for o in options if not o.flag.argument]
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--config", help=CONFIG_HELP), annotation=Optional[Path]))
        callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        callback.__annotations__ = {p.name: p.annotation for p in params}
        group.command(name.split()[-1], help=help or inspect.getdoc(fn))(callback)
        return fn

    return register


def load_config(
    model: type[BaseModel], path: Path | None, given: Mapping[str, Any] = {}, envvars: Mapping[str, str] = {}, options: Sequence[Option] = ()
) -> Any:  # fmt: skip
    """The one loader: defaults < environment fallbacks < the YAML file < flags given. Raises ConfigError."""
    data = read_yaml(path) if path is not None else {}
    for dotted, var in envvars.items():
        if dotted not in given and not _has(data, dotted) and os.environ.get(var):
            _put(data, dotted, os.environ[var])
    for dotted, value in given.items():
        _put(data, dotted, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = f" (from {path} and flags)" if path is not None else ""
        raise ConfigError(f"invalid {model.__name__}{source}:\n" + "\n".join(_problem(e, model, options) for e in exc.errors())) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a YAML mapping of field names to values, not a {type(data).__name__}")
    return data


def _problem(error: Any, model: type[BaseModel], options: Sequence[Option]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or model.__name__
    flags = [o.label for o in options if o.path == where or o.path.startswith(where + ".")]
    hint = f" ({', '.join(flags)})" if flags and error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return f"  {where}: unknown key (no such field)"
    got = f" (got {type(error['input']).__name__})" if error["type"] not in ("missing", "value_error") and error["loc"] else ""
    return f"  {where}{hint}: {error['msg']}{got}"


def _has(data: Mapping[str, Any], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.get(part)  # type: ignore[assignment]
        if not isinstance(data, Mapping):
            return False
    return leaf in data


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    at = data
    for i, part in enumerate(parents):
        child = at.get(part)
        if child is None:
            child = at[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: must be a mapping to set {dotted} from a flag, not a {type(child).__name__}")
        else:
            child = at[part] = dict(child)
        at = child
    at[leaf] = value


def _options(model: type[BaseModel], flags: Mapping[str, Flag]) -> list[Option]:
    paths = {name: Flag() for name, info in model.model_fields.items() if _flag_type(info.annotation) is not None}
    paths.update(flags)
    options, seen = [], {"--config"}
    for dotted, flag in paths.items():
        info = _field(model, dotted)
        if not info.description:
            raise TypeError(f"{model.__name__}.{dotted} has no description: a field's description is its flag's help")
        kind = _flag_type(info.annotation) if flag.parse is None else (list[str] if _is_list(info.annotation) else str)
        if kind is None:
            raise TypeError(f"{model.__name__}.{dotted}: no flag can carry {info.annotation}; give the Flag a parse function")
        name = dotted.split(".")[-1].replace("_", "-")
        default_decls = (f"--{name}/--no-{name}",) if kind is bool else (f"--{name}",)
        resolved = Flag(*(flag.decls or default_decls), argument=flag.argument, parse=flag.parse, envvar=flag.envvar)
        for decl in resolved.decls if not flag.argument else ():
            for part in decl.split("/"):
                if part in seen:
                    raise TypeError(f"{model.__name__}: flag {part} is declared twice")
                seen.add(part)
        options.append(Option(dotted, dotted.replace(".", "__"), resolved, info, get_origin(kind) is list))
    return options


def _parameter(option: Option) -> inspect.Parameter:
    kind = _flag_type(option.info.annotation) if option.flag.parse is None else (list[str] if option.many else str)
    help_text = option.info.description or ""
    if option.flag.envvar:
        help_text += f" Default: ${option.flag.envvar}."
    choices = _literal(option.info.annotation)
    metavar = "|".join(str(c) for c in choices) if choices else None
    if option.flag.argument:
        info = typer.Argument(None, help=help_text, metavar=metavar or option.label, show_default=False)
    else:
        default = None if option.info.is_required() else _shown_default(option.info)
        info = typer.Option(None, *option.flag.decls, help=help_text, metavar=metavar, show_default=default if default is not None else False)
    return inspect.Parameter(option.param, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[kind])  # type: ignore[valid-type]


def _shown_default(info: FieldInfo) -> str | None:
    if info.default_factory is not None or info.default is None:
        return None
    value = info.default
    return value.value if isinstance(value, Enum) else str(value)


def _field(model: type[BaseModel], dotted: str) -> FieldInfo:
    *parents, leaf = dotted.split(".")
    for part in parents:
        inner = _unwrap(model.model_fields[part].annotation) if part in model.model_fields else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            raise TypeError(f"{model.__name__}.{part} is not a nested model (flag for {dotted})")
        model = inner
    if leaf not in model.model_fields:
        raise TypeError(f"{model.__name__} has no field {leaf!r} (flag for {dotted})")
    return model.model_fields[leaf]


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X (other unions stay as they are)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _is_list(annotation: Any) -> bool:
    return get_origin(_unwrap(annotation)) is list


def _literal(annotation: Any) -> tuple[Any, ...]:
    inner = _unwrap(annotation)
    if _is_list(inner):
        inner = get_args(inner)[0]
    return get_args(inner) if get_origin(inner) is Literal else ()


def _flag_type(annotation: Any) -> Any:
    """The type typer parses a flag as, or None when no flag can carry the field."""
    inner = _unwrap(annotation)
    if get_origin(inner) is list:
        item = _flag_type(get_args(inner)[0])
        return list[item] if item is not None and item is not bool and get_origin(item) is not list else None  # type: ignore[valid-type]
    if get_origin(inner) is Literal:
        return str  # the model checks the value; the help lists the choices
    if isinstance(inner, type) and (issubclass(inner, Enum) or inner in SCALARS):
        return inner
    return None
