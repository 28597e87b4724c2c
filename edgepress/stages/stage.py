"""What a stage is: model artifact on disk in, new artifact plus metrics out, input untouched."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from edgepress.io.artifact import ARTIFACT_FILE, Artifact, ArtifactFormat

if TYPE_CHECKING:
    from edgepress.measure.datasets import DataProvider
    from edgepress.measure.task import Task

__all__ = ["ARTIFACT_FILE", "Artifact", "ArtifactFormat", "StageContext", "StageDef", "StageOutput"]


@dataclass(frozen=True)
class StageContext:
    """What a stage may know beyond its input and settings: the data, where to write, and where the model runs."""

    data: DataProvider
    work_dir: Path  # becomes the stage folder once the stage succeeds
    log: Callable[[str], None]
    resume_dir: Path | None = None  # survives a killed stage: per-epoch checkpoints live here
    source_sha256: str = ""
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # finished stages, by name
    task: Task | None = None  # how the recipe judges models (edgepress/measure/task.py): decided before any stage
    # The recipe's targets by name, the primary first: a stage that times candidates times them on targets[0]
    # with `threads`, and one that guards against a CPU's integer saturation asks every target's ISA.
    targets: tuple[str, ...] = ("local",)
    threads: int = 1
    reference_stage: str = "model"  # the stage every later one is judged against (distill's default teacher)

    def output_path(self, fmt: ArtifactFormat) -> Path:
        return self.work_dir / ARTIFACT_FILE[fmt]


@dataclass(frozen=True)
class StageOutput:
    artifact: Artifact
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageDef:
    """One registry entry: the settings schema, the formats it chains, and the function that runs it."""

    kind: str
    # A frozen dataclass; each field carries its help (and range) as metadata, schema.setting / schema.within.
    settings_type: type
    input_format: ArtifactFormat
    output_format: ArtifactFormat
    run: Callable[..., StageOutput]
    summary: str  # what the stage does, in one line: `edgepress stages` lists it beside the kind
    needs: tuple[Literal["calibration", "training"], ...] = ()
    # The models it works on: image classifiers, text encoders (the recipe's data.metric says which), or both.
    modalities: tuple[Literal["image", "text"], ...] = ("image",)
    # Checks layer names in the settings against the source model, before any stage runs.
    check_names: Callable[[Any, Any], None] | None = None
    # Checks, before any stage runs, that the stage can work on the recipe's task (edgepress/measure/task.py) with these
    # settings: a training loss for its metric, one input where it traces one, ...
    check_task: Callable[[Any, Any], None] | None = None
    # Checks, before any stage runs, that its output can run on the recipe's targets (their names, primary first)
    # with these settings; raises UserError.
    check_targets: Callable[[Any, tuple[str, ...]], None] | None = None
    # Whether, with these settings, its output depends on timings on the primary target (a search that keeps
    # the fastest candidate): then that target's threads are part of the stage's resume key.
    timed: Callable[[Any], bool] | None = None
    # Whether, with these settings, its output depends on which CPUs the recipe's targets are (ptq's automatic
    # saturation guard): then the targets' names are part of the stage's resume key.
    reads_targets: Callable[[Any], bool] | None = None
    # What to try when its model is surely slower than the ONNX reference on a target (the run's warning ends with
    # it); None: the pipeline's advice for a quantized model (the per-operator profile, ptq's float fallbacks).
    when_slower: str | None = None
