"""The one explicit registry of stages. Stage modules import torch lazily, so `check` stays fast."""

from __future__ import annotations

from edgepress.compress import depth, distill, prune, ptq, ptq_accuracy, qat, sparsify, train
from edgepress.export import onnx_export
from edgepress.stage import StageDef

REGISTRY: dict[str, StageDef] = {
    stage.kind: stage
    for stage in (
        train.STAGE,
        prune.STAGE,
        depth.STAGE,
        sparsify.STAGE,
        distill.STAGE,
        onnx_export.STAGE,
        ptq.STAGE,
        ptq_accuracy.STAGE,
        qat.STAGE,
    )
}
