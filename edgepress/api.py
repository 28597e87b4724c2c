"""The Python API: what the command line does, for notebooks and scripts (re-exported by `edgepress`).

Errors are `edgepress.UserError` (problem and fix on one line) where the command line exits 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepress.recipe import Recipe, from_table
from edgepress.recipe import load as _load

if TYPE_CHECKING:
    from edgepress.gating.release import GateResult
    from edgepress.report.model import Report

__all__ = ["CheckResult", "bench", "check", "gate", "load_recipe", "output_folder", "recipe_from_dict", "run"]


def load_recipe(path: str | Path) -> Recipe:
    """A recipe file, validated as `edgepress check` validates it before any work (no data is read yet)."""
    return _load(Path(path))


def recipe_from_dict(table: dict[str, Any], *, base_dir: str | Path = ".") -> Recipe:
    """A recipe built in code: the same tables and keys as the TOML file; relative paths resolve from base_dir."""
    return from_table(table, path=Path(base_dir).resolve() / "recipe.toml")


@dataclass(frozen=True)
class CheckResult:
    """What `check` learned without running a stage."""

    recipe: str
    stages: tuple[str, ...]  # "model" first, then each stage's name
    input_shape: tuple[int, ...]  # one sample's, as the data gives it (a text model's: its token ids')
    input_shapes: dict[str, tuple[int, ...]]  # by input name, for a model with several; else empty
    evaluation_sets: tuple[str, ...]
    metric: str
    output: str | None  # the model output the metric reads, where the model has several


def check(recipe: Recipe | str | Path) -> CheckResult:
    """Validates the recipe, its files and data, and builds its model once to learn its inputs and outputs."""
    from edgepress.running.pipeline import Pipeline, build_source, check_layer_names

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    pipeline = Pipeline(recipe, out_dir=Path(tempfile.gettempdir()))
    data = pipeline.prepare()
    with tempfile.TemporaryDirectory() as scratch:
        source = build_source(recipe, work_dir=Path(scratch), input_shape=data.input_shape, log=lambda _: None)
        check_layer_names(recipe, source.artifact)
    sample = data.evaluation[0].sample()
    shapes = ({name: tuple(value.shape) for name, value in sample.items()} if isinstance(sample, dict)
              and len(sample) > 1 and recipe.data.modality != "text" else {})
    return CheckResult(recipe=recipe.name, stages=("model", *(s.name for s in recipe.stages)),
                       input_shape=tuple(data.input_shape or ()), input_shapes=shapes,
                       evaluation_sets=tuple(s.name for s in data.evaluation), metric=pipeline.task.metric.key,
                       output=pipeline.task.output)


def output_folder(recipe: Recipe, out: str | Path | None = None) -> Path:
    """Where `run` writes: `out`, or runs/<recipe name> under the working folder."""
    return Path(os.path.abspath(out if out is not None else Path("runs") / recipe.name))


def run(recipe: Recipe | str | Path, *, out: str | Path | None = None, force: bool = False,
        rerun_from: str | None = None, adopt: bool = False) -> Report | None:
    """Runs every stage, measures each artifact on each target, writes the reports into `output_folder(recipe,
    out)` and gates the release; returns the typed report (report.json's content). A violated budget is no
    exception: read `report.gate.passed`. Reruns keep the stages whose input, settings and code are unchanged.
    Under torchrun, ranks other than 0 get None: rank 0 reports for all."""
    from edgepress.running.pipeline import Pipeline

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    result = Pipeline(recipe, out_dir=output_folder(recipe, out), force=force, rerun_from=rerun_from,
                      adopt=adopt).run()
    return None if result is None else result.report


def gate(report: Report | str | Path, *, budgets: str | Path | None = None,
         baseline: Report | str | Path | None = None, max_p50_growth_percent: float | None = None) -> GateResult:
    """`edgepress gate` in code: a finished run's report (a Report, or its report.json) held to the recipe's
    budgets it recorded, or to a budgets file, and optionally to a baseline report; `.passed`, `.outcomes`."""
    from edgepress.gating.release import gate_release

    def path(value):
        return Path(value) if isinstance(value, (str, Path)) else value

    return gate_release(path(report), budgets=path(budgets), baseline=path(baseline),
                        max_p50_growth_percent=max_p50_growth_percent)


def bench(model: str | Path, **options: Any) -> dict[str, Any]:
    """`edgepress bench` in code: the latency JSON of an ONNX model on a target. Options are the command's flags
    with underscores (target="qemu-aarch64", compare=path, threads=2, runs=500, duration=5.0, inputs=path,
    dim=["batch=1"], samples=True, profile=True, ...), with the command's defaults."""
    from edgepress.cli import bench as bench_command
    from edgepress.core.errors import UserError
    from edgepress.core.schema import closest

    parser = argparse.ArgumentParser(prog="edgepress bench", add_help=False)
    bench_command.add_arguments(parser)
    args = parser.parse_args([str(model)])
    # Each option's type as the command declares it (paths become Path, as the command line makes them).
    types = {action.dest: action.type for action in parser._actions if action.dest not in ("model", "json_path")}
    for key, value in options.items():
        if key not in types:
            guess = closest(key, sorted(types))
            raise UserError(f"bench() has no option {key!r}",
                            fix=f"did you mean {guess!r}?" if guess else f"use one of {', '.join(sorted(types))}")
        setattr(args, key, Path(value) if types[key] is Path and value is not None else value)
    return bench_command.measure(args)
