"""`edgepress stages [KIND] [--json]`: the stage kinds a recipe can chain, or one kind's settings with their types,
defaults, ranges and help, read from the registry and the settings dataclasses themselves (schema.describe)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from typing import Any

from edgepress.core import schema
from edgepress.core.errors import UserError

HELP = "list the stage kinds a recipe's [[stages]] can name, or one kind's settings with their defaults and help"
WIDTH = 100  # the help under each setting is wrapped to this many columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", help="a stage kind: print its settings (default: list every kind)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: a list of kinds, or the kind's settings as a list of objects")


def kinds() -> list[dict[str, Any]]:
    """Every registered stage kind, in the registry's order."""
    from edgepress.stages.registry import REGISTRY

    return [{"kind": stage.kind, "input_format": stage.input_format, "output_format": stage.output_format,
             "modalities": list(stage.modalities), "needs": list(stage.needs), "summary": stage.summary}
            for stage in REGISTRY.values()]


def settings(kind: str) -> list[dict[str, Any]]:
    """The kind's settings in declaration order; an unknown kind is a UserError naming the closest one."""
    stage = _stage(kind)
    return [{"name": doc.name, "type": doc.type, "required": doc.required,
             "default": None if doc.required else _json_value(doc.default),
             "bounds": None if doc.bounds is None else dataclasses.asdict(doc.bounds), "help": doc.help}
            for doc in schema.describe(stage.settings_type)]


def _stage(kind: str):
    from edgepress.stages.registry import REGISTRY

    if kind in REGISTRY:
        return REGISTRY[kind]
    guess = schema.closest(kind, REGISTRY, fewest_edits=True)
    raise UserError(f"unknown stage kind {kind!r}",
                    fix=f"did you mean {guess!r}?" if guess else f"use one of {', '.join(REGISTRY)}")


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    return value


def toml_value(value: Any) -> str:
    """A default as a recipe writes it; None (the key left out) reads "unset"."""
    if value is None:
        return "unset"
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip() for row in rows]


def kinds_text() -> str:
    return "\n".join(_columns([[row["kind"], f"{row['input_format']} -> {row['output_format']}",
                                ", ".join(row["modalities"]), row["summary"]] for row in kinds()]))


def settings_text(kind: str) -> str:
    stage = _stage(kind)
    needs = f"; needs {' and '.join(stage.needs)} data" if stage.needs else ""
    lines = [f"{stage.kind}: {stage.summary}",
             f"{stage.input_format} -> {stage.output_format}; {', '.join(stage.modalities)} models{needs}", ""]
    docs = schema.describe(stage.settings_type)
    rows = _columns([["setting", "type", "default", "range"]]
                    + [[doc.name, doc.type, toml_value(doc.default), "" if doc.bounds is None else str(doc.bounds)]
                       for doc in docs])
    lines.append(rows[0])
    for row, doc in zip(rows[1:], docs):
        lines.append(row)
        lines += textwrap.wrap(doc.help, WIDTH, initial_indent="    ", subsequent_indent="    ",
                               break_on_hyphens=False)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.kind is None:
        text = json.dumps(kinds(), indent=2) if args.json else kinds_text()
    else:
        text = json.dumps(settings(args.kind), indent=2) if args.json else settings_text(args.kind)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `edgepress stages qat | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush then fails no more
    return 0
