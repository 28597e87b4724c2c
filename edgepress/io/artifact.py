"""A model file on disk and its format: what every stage takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ArtifactFormat = Literal["torch", "onnx"]
ARTIFACT_FILE = {"torch": "model.pt", "onnx": "model.onnx"}


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: ArtifactFormat
