"""What a stage is: model artifact on disk in, new artifact plus metrics out, input untouched."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    from edgepress.datasets import DataProvider
    from edgepress.recipe import Recipe
    from edgepress.task import Task

ArtifactFormat = Literal["torch", "onnx"]
ARTIFACT_FILE = {"torch": "model.pt", "onnx": "model.onnx"}


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: ArtifactFormat


@dataclass(frozen=True)
class StageContext:
    recipe: Recipe
    data: DataProvider
    work_dir: Path  # becomes the stage folder once the stage succeeds
    log: Callable[[str], None]
    resume_dir: Path | None = None  # survives a killed stage: per-epoch checkpoints live here
    source_sha256: str = ""
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # finished stages, by name
    task: Task | None = None  # how the recipe judges models (edgepress/task.py): decided before any stage

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
    settings_type: type
    input_format: ArtifactFormat
    output_format: ArtifactFormat
    run: Callable[..., StageOutput]
    summary: str
    needs: tuple[Literal["calibration", "training"], ...] = ()
    # The models it works on: image classifiers, text encoders (the recipe's data.metric says which), or both.
    modalities: tuple[Literal["image", "text"], ...] = ("image",)
    # Checks layer names in the settings against the source model, before any stage runs.
    check_names: Callable[[Any, Any], None] | None = None
    # Checks, before any stage runs, that the stage can work on the recipe's task (edgepress/task.py) with these
    # settings: a training loss for its metric, one input where it traces one, ...
    check_task: Callable[[Any, Any], None] | None = None
    # Whether, with these settings, its output depends on timings on the primary target (a search that keeps
    # the fastest candidate): then that target's threads are part of the stage's resume key.
    timed: Callable[[Any], bool] | None = None
    # Whether, with these settings, its output depends on which CPUs the recipe's targets are (ptq's automatic
    # saturation guard): then the targets' names are part of the stage's resume key.
    reads_targets: Callable[[Any], bool] | None = None
