"""The recipe: one TOML file from checkpoint to gated release, validated before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgepress import datapath
from edgepress.schema import (BATCH, SAMPLES, SEEDS, THREADS, SchemaError, bounded, closest, parse, read_toml,
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
class DatasetSpec:
    """A built-in `dataset` ('cifar10:test_raw_1017', 'digits:test', 'pydoc_topics:test', ...), an npz `path`,
    IDX `images`+`labels`, or a text file of `sentences` (one per line)."""

    dataset: str | None = None
    path: Path | None = None
    images: Path | None = None
    labels: Path | None = None
    sentences: Path | None = None
    limit: int | None = within(*SAMPLES, default=None)
    label: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("dataset", "path", "images", "sentences") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of dataset, path (npz), images (+labels, IDX) or sentences (text); "
                             f"got {given or 'none'}")
        if (self.images is None) != (self.labels is None):
            raise ValueError("IDX data needs both images and labels")

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        if self.dataset:
            return self.dataset
        return Path(self.path or self.images or self.sentences).name


@dataclass(frozen=True)
class PreprocessSpec:
    """uint8 pixels -> float: x * scale, then (x - mean) / std per channel."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")


@dataclass(frozen=True)
@bounded
class DataSpec:
    evaluation: tuple[DatasetSpec, ...]
    calibration: DatasetSpec | None = None
    training: DatasetSpec | tuple[DatasetSpec, ...] | None = None  # several sets are concatenated
    preprocess: PreprocessSpec = PreprocessSpec()
    # "top1": image classification (accuracy, agreement); "cosine": text sentence embeddings (cosine
    # similarity with the reference stage's embeddings, top-5 neighbour agreement).
    metric: Literal["top1", "cosine"] = "top1"
    tokenizer: Path | None = None  # text: a tokenizer.json; default the zoo model's own
    batch_size: int = within(*BATCH, default=256)

    def __post_init__(self) -> None:
        if not self.evaluation:
            raise ValueError("at least one [[data.evaluation]] set is needed")
        if self.tokenizer is not None and self.metric != "cosine":
            raise ValueError('tokenizer is for text models: set metric = "cosine" too, or drop it')

    @property
    def modality(self) -> Literal["image", "text"]:
        return "text" if self.metric == "cosine" else "image"


@dataclass(frozen=True)
@bounded
class BenchSpec:
    warmup_runs: int = within(1, 10000, default=50)
    runs: int = within(200, 100000, default=200)  # at least 200 for stable percentiles
    batch: int = within(1, 4096, default=1)


@dataclass(frozen=True)
@bounded
class Budgets:
    """Release budgets, checked on the last stage; a budget left out is not checked."""

    size_bytes: int | None = within(1, 2**40, default=None)
    latency_p90_ms: float | None = within(0, 3_600_000, default=None, low_open=True)
    accuracy_drop_points: float | None = within(0, 100, default=None)
    agreement_min: float | None = None
    cosine_min: float | None = None  # text: mean cosine similarity with the reference stage's embeddings
    top5_agreement_min: float | None = None  # text: share of each sentence's 5 nearest neighbours kept

    def __post_init__(self) -> None:
        for name in ("agreement_min", "top5_agreement_min"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a share in [0, 1], got {value}")
        if self.cosine_min is not None and not -1.0 <= self.cosine_min <= 1.0:
            raise ValueError(f"cosine_min is a cosine similarity in [-1, 1], got {self.cosine_min}")


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
        from edgepress.targets import check_name

        check_name(self.name)
        for name in self.disabled_optimizers:
            if not name.isidentifier():
                raise ValueError(f"disabled_optimizers: {name!r} is not an ONNX Runtime transformer name "
                                 "(e.g. SkipLayerNormFusion)")
        if self.emulated and self.budgets.latency_p90_ms is not None:
            raise ValueError(f"{self.name} is emulated: its timings are not latency, so latency_p90_ms cannot gate it")

    @property
    def emulated(self) -> bool:
        return self.name.startswith("qemu-")


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
    from edgepress.stages import REGISTRY  # the registry imports stage modules, which import this one

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
    targets = _targets(table, resolve)
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
        data=parse(DataSpec, table["data"], where="data", resolve_path=resolve),
        stages=tuple(stages),
        targets=targets,
        bench=parse(BenchSpec, table.get("bench", {}), where="bench", resolve_path=resolve),
        budgets=parse(Budgets, table.get("budgets", {}), where="budgets", resolve_path=resolve),
        reference_stage=reference,
    )
    _check_formats(recipe)
    _check_budgets(recipe)
    return recipe


def _targets(table: dict[str, Any], resolve) -> tuple[TargetSpec, ...]:
    """[target] for one, [[targets]] for several (the first is the primary), not both."""
    if "target" in table and "targets" in table:
        raise SchemaError("the recipe has both [target] and [[targets]]",
                          fix="keep [[targets]] and move the [target] table into it as its first entry")
    if "targets" not in table:
        return (parse(TargetSpec, table.get("target", {}), where="target", resolve_path=resolve),)
    listed = table["targets"]
    if not isinstance(listed, list) or not listed:
        raise SchemaError("'targets' must be a non-empty array of tables", fix="write each as [[targets]] with name = ...")
    found = tuple(parse(TargetSpec, t, where=f"targets[{i}]", resolve_path=resolve) for i, t in enumerate(listed))
    quality = ("accuracy_drop_points", "agreement_min", "cosine_min", "top5_agreement_min")
    for index, spec in enumerate(found[1:], start=1):
        wanted = [q for q in quality if getattr(spec.budgets, q) is not None]
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


_BUDGETS_OF = {"top1": ("accuracy_drop_points", "agreement_min"), "cosine": ("cosine_min", "top5_agreement_min")}


def _check_budgets(recipe: Recipe) -> None:
    """Accuracy budgets need a classifier's labels, cosine budgets a text model's embeddings."""
    for metric, names in _BUDGETS_OF.items():
        for name in names:
            if metric != recipe.data.metric and any(getattr(b, name) is not None for b in _all_budgets(recipe)):
                usable = ", ".join(_BUDGETS_OF[recipe.data.metric])
                raise SchemaError(f"budgets.{name} needs data.metric = {metric!r}, but this recipe's is "
                                  f"{recipe.data.metric!r}", fix=f"use {usable} (or size_bytes, latency_p90_ms)")


def _all_budgets(recipe: Recipe) -> list[Budgets]:
    return [recipe.budgets] + [t.budgets for t in recipe.targets]


def _check_formats(recipe: Recipe) -> None:
    """Stages must chain: each one's input format is what the previous one produced."""
    from edgepress.stages import REGISTRY

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
            raise SchemaError(f"stage {stage.name!r} ({stage.kind}) takes a {wanted} model but gets a {current} one",
                              fix="reorder the stages (export turns a torch model into ONNX)")
        current = REGISTRY[stage.kind].output_format
    if current != "onnx" and any(b.latency_p90_ms is not None for b in _all_budgets(recipe)):
        raise SchemaError("budgets.latency_p90_ms needs the last stage to produce an ONNX model",
                          fix="add an export stage (and ptq) after the torch stages")
