"""Turn TOML tables into frozen dataclasses, rejecting anything the dataclass does not declare.

Every error names the offending key by its dotted path and, for an unknown key,
the closest valid one, so a misspelt recipe fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from edgepress.core.errors import UserError


class SchemaError(UserError):
    pass


INT_LIMIT = 2**63
FLOAT_LIMIT = sys.float_info.max


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


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The sensible range of a number setting: [low, high], or (low, high] where `low` itself means nothing
    (a latency budget of 0 ms). Anything outside is a typo or a unit mistake, refused before any work."""

    low: float
    high: float
    low_open: bool = False

    def holds(self, value: float) -> bool:
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"


def _number(value: float) -> str:
    return f"{value:_}" if isinstance(value, int) and abs(value) > 99999 else f"{value:g}"  # TOML reads 1_000_000


def within(low: float, high: float, *, default: Any, low_open: bool = False, help: str = "") -> Any:
    """A dataclass field holding a number (or a tuple of numbers) in `Bounds(low, high)`; parse() enforces it.
    Its bounds (and its help) hold in subclasses that redeclare the field with another default.
    `help`: what the setting does, for `edgepress stages KIND` (see `setting`)."""
    metadata: dict[str, Any] = {"bounds": Bounds(low, high, low_open=low_open)}
    if help:
        metadata["help"] = help
    return dataclasses.field(default=default, metadata=metadata)


def setting(default: Any = dataclasses.MISSING, *, default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
            help: str) -> Any:
    """A dataclass field without bounds, with its help beside it: what the setting does and what its values mean,
    as `edgepress stages KIND` prints it. Give `default`, or `default_factory` for a mutable one (a table)."""
    if (default is dataclasses.MISSING) == (default_factory is dataclasses.MISSING):
        raise TypeError("setting() takes exactly one of default and default_factory")
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def bounded(cls: type) -> type:
    """Under @dataclass: its `within` fields are checked on construction too, so settings built in code (not
    parsed from a recipe) hold the same ranges; a ValueError names the field. Wraps the class's own
    __post_init__, if any; a subclass without one inherits the check."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            try:
                _check_bounds(_bounds(type(self), field.name), getattr(self, field.name), field.name)
            except SchemaError as exc:
                raise ValueError(exc.problem) from None
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    return cls


# Ranges shared by the recipe and the stages' settings: far beyond any real use, short of a typo's extra zeros.
SEEDS = (0, 2**32 - 1)  # numpy's seeds
SAMPLES = (1, 10**9)  # how many samples a set, a limit or a setting names
BATCH = (1, 65536)
THREADS = (1, 256)
EPOCHS = (1, 10000)


def _metadata(cls: type, name: str, key: str) -> Any:
    for klass in cls.__mro__:  # a subclass redeclaring `epochs: int = 1` keeps its parent's range and help
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and key in found.metadata:
            return found.metadata[key]
    return None


def _bounds(cls: type, name: str) -> Bounds | None:
    return _metadata(cls, name, "bounds")


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One setting of a settings dataclass, as `edgepress stages KIND` shows it."""

    name: str
    type: str  # as a recipe writes it: "int", "a list of str", "'u8s8' or 's8s8'"
    default: Any  # the value itself (a default_factory's result); dataclasses.MISSING where the key is required
    bounds: Bounds | None
    help: str  # "" where the field has none

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def describe(cls: type) -> list[FieldDoc]:
    """Every setting `parse(cls, ...)` reads, in declaration order, with its type, default, bounds and help (a
    subclass's redeclared field keeps its parent's bounds and, unless it gives its own, its parent's help)."""
    hints = typing.get_type_hints(cls)
    docs = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        docs.append(FieldDoc(name=field.name, type=_type_name(hints[field.name]), default=default,
                             bounds=_bounds(cls, field.name), help=_metadata(cls, field.name, "help") or ""))
    return docs


def _check_bounds(bounds: Bounds | None, value: Any, place: str) -> None:
    if bounds is None or value is None:
        return
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            _check_bounds(bounds, item, f"{place}[{index}]")
        return
    if not bounds.holds(value):
        key = place.rsplit(".", 1)[-1].split("[", 1)[0]
        raise SchemaError(f"'{place}' = {_number(value)} is outside the sensible range {bounds}",
                          fix=f"set {key} to a value in {bounds}")


MAX_TOML_BYTES = 1 << 20  # a recipe or budgets file is a page of settings; anything larger is not one


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    """A TOML file's table; a missing, oversized or malformed file is a one-line UserError naming `what` it is."""
    import tomllib

    if not path.exists():
        raise UserError(f"{what} {path} does not exist", fix=f"pass the path of a .toml {what}")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file", fix=f"pass the path of a .toml {what}")
    with open(path, "rb") as fh:
        data = fh.read(MAX_TOML_BYTES + 1)  # never more, whatever the file claims or grows to
    if len(data) > MAX_TOML_BYTES:
        raise UserError(f"{what} {path.name} is larger than {MAX_TOML_BYTES >> 20} MiB",
                        fix=f"point to the {what} itself, a small .toml file")
    try:
        return tomllib.loads(data.decode("utf-8-sig"))  # an editor's byte-order mark is no error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path.name} is not valid TOML ({exc})", fix="correct the TOML syntax") from None
    except RecursionError:
        raise UserError(f"{what} {path.name} nests arrays or tables too deeply to read",
                        fix="write the settings as flat key = value lines") from None


def closest(name: str, valid: typing.Iterable[str], *, fewest_edits: bool = False) -> str | None:
    """The valid name most like `name` (difflib's ratio, at least 0.5), or None. Where several are equally alike,
    difflib's pick is the alphabetically last; with `fewest_edits`, the one the fewest edits away (a swap of two
    neighbouring letters counts as one: "pqt" is "ptq", not "qat"), difflib's pick where that ties too."""
    valid = list(valid)
    matches = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not matches or not fewest_edits:
        return matches[0] if matches else None
    ratio = lambda candidate: difflib.SequenceMatcher(None, candidate, name).ratio()  # noqa: E731 - as difflib scores
    best = ratio(matches[0])
    tied = [candidate for candidate in valid if ratio(candidate) == best]
    return min(tied, key=lambda candidate: (_edits(name, candidate), candidate != matches[0]))


def _edits(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbouring letters that turn `a` into `b`."""
    previous2, previous = [], list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[len(b)]


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
            _check_bounds(_bounds(cls, name), values[name], place)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError(f"missing key '{place}'", fix=f"add {name} = <{_type_name(hints[name])}>")
    try:
        return cls(**values)
    except ValueError as exc:
        raise SchemaError(f"invalid '{where}': {exc}", fix="correct the value as the message says") from None


def _same_shape(tp: Any, value: Any) -> bool:
    """Whether `value` is the kind of TOML value that `tp` reads: a table for a dataclass, an array for a tuple."""
    if isinstance(value, dict):
        return dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict
    return isinstance(value, list) and typing.get_origin(tp) is tuple


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
        errors = []
        for option in options:
            try:
                return _convert(option, value, place, resolve_path)
            except SchemaError as exc:
                errors.append((option, exc))
        for option, exc in errors:  # a table meant as the table option: its own error names the key
            if _same_shape(option, value):
                raise exc
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
        try:
            if "\x00" in value:
                raise ValueError("it contains a NUL character")
            return resolve_path(value)
        except (ValueError, RuntimeError, OSError) as exc:  # a NUL, ~unknown-user, a name too long, a symlink loop
            raise SchemaError(f"'{place}' = {value[:200]!r} is not a usable path ({exc})",
                              fix="write a path relative to the recipe's folder, an absolute one, or {data}/...") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        if not -INT_LIMIT <= value < INT_LIMIT:  # torch, numpy and ONNX Runtime take 64-bit integers
            raise SchemaError(f"'{place}' = {value} is out of range", fix=f"set {place.rsplit('.', 1)[-1]} to a "
                              "sensible size (at most 2**63 - 1 in any case)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        if abs(value) > FLOAT_LIMIT or not math.isfinite(value):  # abs first: a huge int has no float
            raise SchemaError(f"'{place}' must be a finite number, got {value!r}",
                              fix=f"set {place.rsplit('.', 1)[-1]} to a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise TypeError(f"schema type {tp!r} at {place} is not supported")
