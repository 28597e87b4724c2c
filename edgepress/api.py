"""The Python API: what the command line does, for notebooks and scripts (re-exported by `edgepress`).

Errors are `edgepress.UserError` (problem and fix on one line) where the command line exits 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepress.recipe import Recipe, from_table
from edgepress.recipe import load as _load

if TYPE_CHECKING:
    from edgepress.gating.release import GateResult
    from edgepress.report.model import Report

__all__ = ["CheckResult", "MergedOperators", "bench", "check", "gate", "load_recipe", "merge_operators",
           "output_folder", "recipe_from_dict", "run"]


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
    """`edgepress bench` in code: the latency JSON of an ONNX model (.onnx or .ort) on a target. Options are the command's flags
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


@dataclass(frozen=True)
class MergedOperators:
    """What `merge_operators` wrote: one ONNX Runtime operators config for a reduced build that runs every model."""

    out: Path
    models: tuple[Path, ...]  # the .ort files merged, in the order given, each once
    types: bool  # whether the config lists each operator's types (build with --enable_reduced_operator_type_support)
    operators: tuple[str, ...]  # "domain;opset;op", as read back from the written file, sorted

    @property
    def operator_count(self) -> int:
        return len(self.operators)

    @property
    def by_domain(self) -> dict[str, int]:
        """{domain: its operators}, in the config's order."""
        found: dict[str, int] = {}
        for entry in self.operators:
            domain = entry.split(";", 1)[0]
            found[domain] = found.get(domain, 0) + 1
        return found

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "models": [str(m) for m in self.models], "types": self.types,
                "operator_count": self.operator_count, "by_domain": self.by_domain, "operators": list(self.operators)}


def merge_operators(sources: Iterable[str | Path], out: str | Path, *, types: bool = False,
                    force: bool = False) -> MergedOperators:
    """`edgepress ops` in code: the operators the .ort models of several runs need, merged by ONNX Runtime's own
    config writer into one file for a reduced build (`--include_ops_by_config`) that ships them all. A source is a
    run folder or its report.json (every ORT-format stage of the run) or an .ort file. `types` lists each operator's
    types too. An existing `out` is refused unless `force`; the file appears whole or not at all."""
    from edgepress.core import atomic
    from edgepress.core.errors import UserError
    from edgepress.io.operators import config_operators, write_config
    from edgepress.report.ort_models import ort_models
    from edgepress.running.options import FORCE, OUT

    out = Path(out)
    models = ort_models(Path(s) for s in sources)
    if out.is_dir():
        raise UserError(f"the output file {out} is a folder",
                        fix=f"pass {OUT} a file name, e.g. {out / 'required_operators.config'}")
    if out.exists() and out.resolve() in {m.resolve() for m in models}:
        raise UserError(f"the output file {out} is one of the models to merge", fix=f"pass {OUT} another file")
    blocking = next((folder for folder in out.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise UserError(f"the output file {out} lies under {blocking}, which is a file",
                        fix=f"pass {OUT} a path in a folder")
    if out.exists() and not force:
        raise UserError(f"the output file {out} exists", fix=f"pass {FORCE} to replace it, or another {OUT}")
    try:
        with atomic.atomic_path(out) as scratch:
            # The header names the models as the caller named them, not the scratch file's neighbours.
            write_config(models, scratch, with_types=types, names=[str(m) for m in models])
    except OSError as exc:
        raise UserError(f"cannot write the output file {out} ({exc.strerror or exc})",
                        fix=f"pass {OUT} a path in a writable folder with room on its disk") from None
    return MergedOperators(out=out, models=tuple(models), types=types, operators=config_operators(out))
