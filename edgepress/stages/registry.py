"""The one explicit registry of stages. Stage modules import torch lazily, so `check` stays fast."""

from __future__ import annotations

from edgepress.compress import (accuracy_aware_ptq, distill, dynamic_int8, fuse_transformer, int4_weights, prune,
                                prune_depth, ptq, qat, sparsify, train)
from edgepress.export import export, export_transformer, ort_format
from edgepress.stages.stage import StageDef

REGISTRY: dict[str, StageDef] = {
    stage.kind: stage
    for stage in (
        train.STAGE,
        prune.STAGE,
        prune_depth.STAGE,
        sparsify.STAGE,
        distill.STAGE,
        export.STAGE,
        ptq.STAGE,
        accuracy_aware_ptq.STAGE,
        qat.STAGE,
        export_transformer.STAGE,
        fuse_transformer.STAGE,
        dynamic_int8.STAGE,
        int4_weights.STAGE,
        ort_format.STAGE,
    )
}
