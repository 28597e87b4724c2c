"""A model file on disk and its format: what every stage takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# "ort": ONNX Runtime's own flatbuffer format (ort_format stage), what ONNX Runtime Mobile and reduced builds load.
ArtifactFormat = Literal["torch", "onnx", "ort"]
ARTIFACT_FILE = {"torch": "model.pt", "onnx": "model.onnx", "ort": "model.ort"}
# Formats ONNX Runtime runs: evaluated, sized and timed on targets alike.
ONNX_RUNTIME_FORMATS = ("onnx", "ort")


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: ArtifactFormat

    @property
    def runs_on_onnxruntime(self) -> bool:
        return self.format in ONNX_RUNTIME_FORMATS
