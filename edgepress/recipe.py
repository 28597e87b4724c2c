"""The recipe: one TOML file from checkpoint to gated release, validated before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgepress.core import datapath
from edgepress.core.errors import UserError
from edgepress.io.artifact import ONNX_RUNTIME_FORMATS
from edgepress.measure import metrics
from edgepress.measure.datasets import DataSpec
from edgepress.measure.metrics import usable_budgets
from edgepress.stages.registry import REGISTRY
from edgepress.targets import check_name, is_emulated
from edgepress.core.schema import (SAMPLES, SEEDS, THREADS, SchemaError, bounded, closest, parse, read_toml,
                              unknown_key_error, within)


@dataclass(frozen=True)
@bounded
class ModelSpec:
    """A zoo `name` or a `package.module:function` `entry`, or an existing `onnx` file."""

    name: str | None = None
    entry: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    onnx: Path | None = None
    input_shape: tuple[int, ...] | None = within(1, 65536, default=None)
    seed: int = within(*SEEDS, default=0)  # initial weights when there is no checkpoint: runs are reproducible

    def __post_init__(self) -> None:
        given = [k for k in ("name", "entry", "onnx") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of name (a zoo model), entry ('package.module:function') "
                             f"or onnx (a model file); got {given or 'none'}")
        if self.entry is not None and ":" not in self.entry:
            raise ValueError(f"entry {self.entry!r} must look like 'package.module:function'")
        if self.onnx is not None and self.checkpoint is not None:
            raise ValueError("an onnx model takes no checkpoint")


@dataclass(frozen=True)
@bounded
class BenchSpec:
    warmup_runs: int = within(1, 10000, default=50)
    runs: int = within(200, 100000, default=200)  # at least 200 for stable percentiles
    batch: int = within(1, 4096, default=1)


def _budget_fields() -> list[tuple[str, Any, Any]]:
    """[budgets] keys: one per budget of the metric table (edgepress/measure/metrics.py), each with its range."""
    found = []
    for budget in metrics.BUILTIN_BUDGETS.values():
        kind = int | None if budget.name.endswith("_bytes") else float | None
        found.append((budget.name, kind, within(budget.bounds.low, budget.bounds.high, default=None,
                                                low_open=budget.bounds.low_open)))
    # A user metric's budgets (<name>_min, ...): their names are known only once the recipe's metric is.
    found.append(("custom", dict[str, float], field(default_factory=dict, init=False)))
    return found


def _limits(self) -> dict[str, float]:
    """Every budget set here, by name: those left out are not checked."""
    found = {name: getattr(self, name) for name in metrics.BUILTIN_BUDGETS if getattr(self, name) is not None}
    return found | dict(self.custom)


def _with_custom(self, custom: dict[str, float]):
    """A copy holding a user metric's budgets too (a frozen dataclass: they are no TOML key of their own)."""
    copy = replace(self)
    object.__setattr__(copy, "custom", dict(custom))
    return copy


def _budgets_class() -> type:
    """The [budgets] dataclass, built from the metric table: bounded() must wrap the class before dataclass()
    writes its __init__, as with the decorated settings classes."""
    fields = _budget_fields()
    namespace = {"__annotations__": {name: kind for name, kind, _ in fields}, "__module__": __name__,
                 "__qualname__": "Budgets", "limits": _limits, "with_custom": _with_custom,
                 "__doc__": "Release budgets, checked on the last stage: size, latency and each metric's "
                            "(edgepress/measure/metrics.py). A budget left out is not checked."}
    namespace.update({name: default for name, _, default in fields})
    return dataclass(frozen=True)(bounded(type("Budgets", (), namespace)))


Budgets = _budgets_class()


@dataclass(frozen=True)
@bounded
class TargetSpec:
    """Where each stage's ONNX model is timed, and optionally evaluated: local, ssh://user@host[:port],
    qemu-aarch64[:CPU] (edgepress/targets). The recipe's first target is the primary one: its numbers are the
    stage's headline metrics and [budgets] gate them; every target may add budgets of its own."""

    name: str = "local"
    threads: int = within(*THREADS, default=1)
    # Run the evaluation sets through this target's ONNX Runtime too (ARM kernels may answer differently).
    # The primary target's quality metrics come from the host, where evaluation is fastest.
    evaluate: bool = False
    evaluate_samples: int | None = within(*SAMPLES, default=None)  # the first N samples of each set; emulation is slow
    latency: bool = True  # time the models here (under emulation the timings are marked, never gated)
    # The stages measured here (default: every ONNX stage). Emulation runs an FP32 ResNet-20 at seconds per
    # image, so an ARM check usually names only the INT8 stage it ships.
    stages: tuple[str, ...] = ()
    python: str | None = None  # the device's Python (ssh: default python3)
    identity_file: Path | None = None  # ssh: a private key
    workdir: str | None = None  # ssh: parent folder of the temporary working folder
    # ONNX Runtime session settings for timing and evaluation here, as the device runner's flags. "zero" flushes
    # denormal floats (x86: padded attention masks leave them, and they run in microcode, several times slower).
    denormals: Literal["keep", "zero"] = "keep"
    # Graph transformers the session skips, e.g. SkipLayerNormFusion where the fused kernel is the slower one.
    disabled_optimizers: tuple[str, ...] = ()
    budgets: Budgets = Budgets()

    def __post_init__(self) -> None:
        check_name(self.name)
        for name in self.disabled_optimizers:
            if not name.isidentifier():
                raise ValueError(f"disabled_optimizers: {name!r} is not an ONNX Runtime transformer name "
                                 "(e.g. SkipLayerNormFusion)")
        timed = [name for name in metrics.TIMED_BUDGETS if name in self.budgets.limits()]
        if self.emulated and timed:
            raise ValueError(f"{self.name} is emulated: its timings are not latency nor its memory the device's, so "
                             f"{timed[0]} cannot gate it")

    @property
    def emulated(self) -> bool:
        return is_emulated(self.name)


@dataclass(frozen=True)
class StageSpec:
    kind: str
    name: str
    settings: Any


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    model: ModelSpec
    data: DataSpec
    stages: tuple[StageSpec, ...]
    targets: tuple[TargetSpec, ...] = (TargetSpec(),)
    bench: BenchSpec = BenchSpec()
    budgets: Budgets = Budgets()
    reference_stage: str = "model"

    @property
    def target(self) -> TargetSpec:
        """The primary target: the first of [target] / [[targets]]."""
        return self.targets[0]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def onnx_reference_stage(self) -> str | None:
        """The stage every later ONNX model is timed against, interleaved, and whose size `size_ratio` divides
        by: the reference stage if it produces ONNX, else the first ONNX stage after it (its export: what the
        reference model costs as ONNX). None when no ONNX stage follows it."""
        current = "onnx" if self.model.onnx is not None else "torch"
        steps = [("model", current)] + [(s.name, REGISTRY[s.kind].output_format) for s in self.stages]
        names = [name for name, _ in steps]
        return next((name for name, fmt in steps[names.index(self.reference_stage):] if fmt == "onnx"), None)


NAME_MAX_CHARS = 100
STAGE_NAME_MAX_CHARS = 64  # a folder NN-<name>, and <name> again in its temporary names


def check_run_name(name: Any, *, from_file: bool) -> str:
    """The run's name is its default folder, runs/<name>: a plain word, never a path. Letters, digits, '-', '_'
    and '.', not starting with a dot (hidden, or '..'), 1 to NAME_MAX_CHARS characters."""
    source = "the recipe's file name (its default name)" if from_file else "'name'"
    fix = 'set name = "my-recipe" in the recipe (letters, digits, "-", "_", ".")'
    if not isinstance(name, str):
        raise SchemaError(f"{source} must be a string, got {type(name).__name__}", fix=fix)
    shown = repr(name[:NAME_MAX_CHARS + 20])
    if not 1 <= len(name) <= NAME_MAX_CHARS or len(name.encode("utf-8", "replace")) > 2 * NAME_MAX_CHARS:
        raise SchemaError(f"{source} {shown} must have 1 to {NAME_MAX_CHARS} characters, not {len(name)}", fix=fix)
    if name.startswith(".") or ".." in name or not all(c.isalnum() or c in "-_." for c in name) or not name.isprintable():
        raise SchemaError(f"{source} {shown} is not a plain file name: use letters, digits, '-', '_' and '.', "
                          "not starting with '.' nor holding '..'", fix=fix)
    return name


_TOP_LEVEL = {"name", "model", "data", "stages", "target", "targets", "bench", "budgets", "reference_stage"}


def load(path: Path) -> Recipe:
    path = Path(path).resolve()
    return from_table(read_toml(path, what="recipe"), path=path)


def from_table(table: dict[str, Any], *, path: Path) -> Recipe:
    def resolve(value: str) -> Path:
        return datapath.resolve(value, base=path.parent)

    for key in table:
        if key not in _TOP_LEVEL:
            raise unknown_key_error(key, "", _TOP_LEVEL)
    for key in ("model", "data"):
        if key not in table:
            raise SchemaError(f"missing table [{key}]", fix=f"add a [{key}] table to the recipe")
    stages_table = table.get("stages", [])
    if not isinstance(stages_table, list):
        raise SchemaError("'stages' must be an array of tables", fix="write each stage as [[stages]] with kind = ...")
    stages = []
    seen_names = {"model"}
    for index, stage_table in enumerate(stages_table):
        where = f"stages[{index}]"
        if not isinstance(stage_table, dict) or "kind" not in stage_table:
            raise SchemaError(f"'{where}' has no kind", fix=f"add kind = one of {', '.join(REGISTRY)}")
        settings_table = dict(stage_table)
        kind = settings_table.pop("kind")
        name = settings_table.pop("name", kind)
        if not isinstance(kind, str) or kind not in REGISTRY:
            guess = closest(str(kind), REGISTRY)
            raise SchemaError(f"unknown stage kind {kind!r} in {where}",
                              fix=f"did you mean {guess!r}?" if guess else f"use one of {', '.join(REGISTRY)}")
        if (not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum()
                or len(name) > STAGE_NAME_MAX_CHARS):
            raise SchemaError(f"'{where}.name' must be 1 to {STAGE_NAME_MAX_CHARS} letters, digits, '-' or '_', "
                              f"got {name!r}"[:300], fix="choose a short name such as 'ptq-u8s8'")
        if name in seen_names:
            raise SchemaError(f"two stages are named {name!r}", fix="give each stage a distinct name = ...")
        seen_names.add(name)
        settings = parse(REGISTRY[kind].settings_type, settings_table, where=where, resolve_path=resolve)
        stages.append(StageSpec(kind=kind, name=name, settings=settings))
    name = check_run_name(table.get("name", path.stem), from_file="name" not in table)
    data = parse(DataSpec, table["data"], where="data", resolve_path=resolve)
    user = data.user_metric()
    targets = _targets(table, resolve, user=user)
    for index, spec in enumerate(targets):
        for stage in spec.stages:
            if stage not in seen_names:
                guess = closest(stage, seen_names)
                raise SchemaError(f"targets[{index}].stages names {stage!r}, which is no stage of this recipe",
                                  fix=f"did you mean {guess!r}?" if guess else f"use one of {', '.join(sorted(seen_names))}")
        final = stages[-1].name if stages else "model"
        if spec.stages and final not in spec.stages and any(v is not None for v in vars(spec.budgets).values()):
            raise SchemaError(f"targets[{index}] ({spec.name}) has budgets but does not measure the final stage {final!r}",
                              fix=f"add {final!r} to targets[{index}].stages")
    reference = table.get("reference_stage", "model")
    if not isinstance(reference, str) or reference not in seen_names:
        raise SchemaError(f"reference_stage {reference!r} names no stage",
                          fix=f"use one of {', '.join(sorted(seen_names))}")
    recipe = Recipe(
        path=path,
        name=name,
        model=parse(ModelSpec, table["model"], where="model", resolve_path=resolve),
        data=data,
        stages=tuple(stages),
        targets=targets,
        bench=parse(BenchSpec, table.get("bench", {}), where="bench", resolve_path=resolve),
        budgets=parse_budgets(table.get("budgets", {}), where="budgets", user=user),
        reference_stage=reference,
    )
    _check_formats(recipe)
    _check_stage_targets(recipe)
    if recipe.data.metric != "auto":  # "auto" is decided by the data and the model's outputs, at check
        check_budgets(recipe, metric=metrics.METRICS.get(recipe.data.metric) or user)
    return recipe


def _no_paths(value: str) -> Path:
    raise AssertionError("budgets hold no paths")


def parse_budgets(table: Any, *, where: str, user: metrics.Metric | None) -> Budgets:
    """A [budgets] table; a user metric's budgets (<name>_min, ...) are kept apart, as they are no field."""
    if not isinstance(table, dict):
        return parse(Budgets, table, where=where, resolve_path=_no_paths)  # says it must be a table
    names = {b.name for v in (user.values if user else ()) for b in v.budgets}
    custom = {k: v for k, v in table.items() if k in names}
    for key, value in custom.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float("-inf") < value < float("inf"):
            raise SchemaError(f"'{where}.{key}' must be a finite number, got {value!r}", fix=f"set {key} to a number")
    known = {k: v for k, v in table.items() if k not in names}
    fields = {f.name for f in dataclasses.fields(Budgets) if f.init} | names
    for key in known:
        if key not in fields:
            raise unknown_key_error(key, where, fields)
    return parse(Budgets, known, where=where, resolve_path=_no_paths).with_custom({k: float(v) for k, v in custom.items()})


def _targets(table: dict[str, Any], resolve, *, user: metrics.Metric | None) -> tuple[TargetSpec, ...]:
    """[target] for one, [[targets]] for several (the first is the primary), not both."""
    if "target" in table and "targets" in table:
        raise SchemaError("the recipe has both [target] and [[targets]]",
                          fix="keep [[targets]] and move the [target] table into it as its first entry")
    if "targets" not in table:
        return (_target(table.get("target", {}), where="target", resolve=resolve, user=user),)
    listed = table["targets"]
    if not isinstance(listed, list) or not listed:
        raise SchemaError("'targets' must be a non-empty array of tables", fix="write each as [[targets]] with name = ...")
    found = tuple(_target(t, where=f"targets[{i}]", resolve=resolve, user=user) for i, t in enumerate(listed))
    artifact_budgets = {b.name for b in metrics.SIZE_AND_LATENCY}
    for index, spec in enumerate(found[1:], start=1):
        wanted = [q for q in spec.budgets.limits() if q not in artifact_budgets]
        if wanted and not spec.evaluate:
            raise SchemaError(f"targets[{index}] ({spec.name}) has budgets {wanted} but does not evaluate there",
                              fix=f"add evaluate = true to targets[{index}] (and evaluate_samples to keep it short)")
    if found[0].stages:
        raise SchemaError(f"targets[0] ({found[0].name}) names stages, but the primary target measures every ONNX stage",
                          fix="drop stages from the first target, or list another target first")
    names = [t.name for t in found]
    if len(set(names)) != len(names):
        raise SchemaError(f"a target is listed twice in [[targets]]: {names}", fix="list each target once")
    return found


def _target(table: Any, *, where: str, resolve, user: metrics.Metric | None) -> TargetSpec:
    """A target's table, its budgets parsed like the top level's (a user metric's included)."""
    if not isinstance(table, dict) or not isinstance(table.get("budgets", {}), dict):
        return parse(TargetSpec, table, where=where, resolve_path=resolve)  # says what is wrong
    budgets = parse_budgets(table.get("budgets", {}), where=f"{where}.budgets", user=user)
    spec = parse(TargetSpec, {k: v for k, v in table.items() if k != "budgets"}, where=where, resolve_path=resolve)
    try:
        return replace(spec, budgets=budgets)
    except ValueError as exc:
        raise SchemaError(f"invalid '{where}': {exc}", fix="correct the value as the message says") from None


def check_budgets(recipe: Recipe, *, metric: metrics.Metric) -> None:
    """Each budget must read a value the recipe's metric produces: an accuracy budget needs a classifier's labels,
    an MAE budget a regressor's targets (fidelity's cosine, SNR and max error fit every model)."""
    usable = usable_budgets(metric)
    for budgets in _all_budgets(recipe):
        for name in budgets.limits():
            if name not in usable:
                owners = [m.key for m in metrics.METRICS.values() if name in usable_budgets(m)]
                raise SchemaError(f"budgets.{name} needs data.metric = {' or '.join(map(repr, owners))}, but this "
                                  f"recipe's is {metric.key!r}",
                                  fix=f"use {', '.join(n for n in usable if n not in metrics.ARTIFACT_BUDGETS)} "
                                      f"(or {', '.join(metrics.ARTIFACT_BUDGETS)})")


def _all_budgets(recipe: Recipe) -> list[Budgets]:
    return [recipe.budgets] + [t.budgets for t in recipe.targets]


_A_MODEL = {"torch": "a torch model", "onnx": "an ONNX model", "ort": "an ORT-format model (.ort)"}


def _check_stage_targets(recipe: Recipe) -> None:
    """A stage whose output runs only on some CPUs is refused now if the recipe's targets include others."""
    names = tuple(target.name for target in recipe.targets)
    for stage in recipe.stages:
        check = REGISTRY[stage.kind].check_targets
        if check is None:
            continue
        try:
            check(stage.settings, names)
        except UserError as exc:
            raise SchemaError(f"stage {stage.name!r}: {exc.problem}", fix=exc.fix) from None


def _check_formats(recipe: Recipe) -> None:
    """Stages must chain: each one's input format is what the previous one produced."""
    current = "onnx" if recipe.model.onnx is not None else "torch"
    modality = recipe.data.modality
    for stage in recipe.stages:
        if modality not in REGISTRY[stage.kind].modalities:
            others = [kind for kind, d in REGISTRY.items() if modality in d.modalities and d.input_format == current]
            works_on = " and ".join(REGISTRY[stage.kind].modalities)
            raise SchemaError(f"stage {stage.name!r} ({stage.kind}) works on {works_on} models, and this recipe's "
                              f"model is a {modality} model (data.metric = {recipe.data.metric!r})",
                              fix=f"use one of {', '.join(others)} for it")
        wanted = REGISTRY[stage.kind].input_format
        if wanted != current:
            raise SchemaError(f"stage {stage.name!r} ({stage.kind}) takes {_A_MODEL[wanted]} but gets "
                              f"{_A_MODEL[current]}", fix="reorder the stages (export turns a torch model into ONNX, "
                                                           "ort_format an ONNX model into an .ort, which no stage takes)")
        current = REGISTRY[stage.kind].output_format
    timed = [name for b in _all_budgets(recipe) for name in metrics.TIMED_BUDGETS if name in b.limits()]
    if current not in ONNX_RUNTIME_FORMATS and timed:
        raise SchemaError(f"budgets.{timed[0]} needs the last stage to produce an ONNX model (.onnx or .ort)",
                          fix="add an export stage (and ptq) after the torch stages")
    relative = [name for b in _all_budgets(recipe) for name in metrics.RELATIVE_BUDGETS if name in b.limits()]
    last = recipe.stages[-1].name if recipe.stages else "model"
    if relative and recipe.onnx_reference_stage in (None, last):
        raise SchemaError(f"budgets.{relative[0]} compares the last stage with the ONNX reference (the reference "
                          f"stage {recipe.reference_stage!r}, or the first ONNX stage after it), and this recipe has "
                          "no ONNX stage between them",
                          fix="set reference_stage to the stage before the one you ship (e.g. the export of the "
                              "FP32 model), or add an export stage before it")
