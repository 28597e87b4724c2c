"""The one explicit registry of stages. Stage modules import torch lazily, so `check` stays fast."""

from __future__ import annotations

from edgepress.compress import (depth, distill, dynamic_quant, prune, ptq, ptq_accuracy, qat, sparsify, train,
                                transformer_fusion)
from edgepress.export import onnx_export, transformer_export
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
        transformer_export.STAGE,
        transformer_fusion.STAGE,
        dynamic_quant.INT8_STAGE,
        dynamic_quant.INT4_STAGE,
    )
}
