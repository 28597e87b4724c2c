"""Turn TOML tables into frozen dataclasses, rejecting anything the dataclass does not declare.

Every error names the offending key by its dotted path and, for an unknown key,
the closest valid one, so a misspelt recipe fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from edgepress.errors import UserError


class SchemaError(UserError):
    pass


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if tp is Path:
        return "a path string"
    return getattr(tp, "__name__", str(tp))


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    """A TOML file's table; a missing or malformed file is a one-line UserError naming `what` it is."""
    import tomllib

    if not path.is_file():
        raise UserError(f"{what} {path} does not exist", fix=f"pass the path of a .toml {what}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path.name} is not valid TOML ({exc})", fix="correct the TOML syntax") from None


def closest(name: str, valid: typing.Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_key_error(key: str, where: str, valid: typing.Iterable[str]) -> SchemaError:
    valid = sorted(valid)
    guess = closest(key, valid)
    place = f"{where}.{key}" if where else key
    if guess:
        return SchemaError(f"unknown key '{place}'", fix=f"did you mean '{guess}'?")
    return SchemaError(f"unknown key '{place}'", fix=f"valid keys here: {', '.join(valid)}")


def parse(cls: type, table: Any, *, where: str, resolve_path: Callable[[str], Path]) -> Any:
    """Build dataclass `cls` from a TOML table; `where` is the dotted path for messages."""
    if not isinstance(table, dict):
        raise SchemaError(f"'{where}' must be a table, got {type(table).__name__}",
                          fix=f"write [{where}] with key = value lines")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in table:
        if key not in fields:
            raise unknown_key_error(key, where, fields)
    values = {}
    for name, field in fields.items():
        place = f"{where}.{name}" if where else name
        if name in table:
            values[name] = _convert(hints[name], table[name], place, resolve_path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError(f"missing key '{place}'", fix=f"add {name} = <{_type_name(hints[name])}>")
    try:
        return cls(**values)
    except ValueError as exc:
        raise SchemaError(f"invalid '{where}': {exc}", fix="correct the value as the message says") from None


def _convert(tp: Any, value: Any, place: str, resolve_path: Callable[[str], Path]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    wrong = SchemaError(f"'{place}' must be {_type_name(tp)}, got {value!r}",
                        fix=f"set {place.rsplit('.', 1)[-1]} to {_type_name(tp)}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error is the precise one
            return _convert(options[0], value, place, resolve_path)
        for option in options:
            try:
                return _convert(option, value, place, resolve_path)
            except SchemaError:
                continue
        raise wrong
    if origin is Literal:
        if value in args:
            return value
        guess = closest(str(value), [str(a) for a in args])
        hint = f"did you mean {guess!r}?" if guess else f"use one of {', '.join(repr(a) for a in args)}"
        raise SchemaError(f"'{place}' must be {_type_name(tp)}, got {value!r}", fix=hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise wrong
        return tuple(_convert(args[0], v, f"{place}[{i}]", resolve_path) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, where=place, resolve_path=resolve_path)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise wrong
        return resolve_path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"schema type {tp!r} at {place} is not supported")
