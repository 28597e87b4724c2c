"""`sparsify`: unstructured (weight-level) magnitude pruning to a global sparsity.

Reported honestly, for contrast with structural pruning: the zeros stay in dense tensors, so
the file is as large and ONNX Runtime's CPU kernels as slow as before; only the gzip-compressed
size (what a download costs) shrinks. The pipeline measures all three on the exported model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from edgepress.core.errors import UserError
from edgepress.core.layer_names import require_layers
from edgepress.core.schema import setting
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
class SparsifySettings:
    sparsity: float = setting(0.5, help="share, in (0, 1), of the prunable weights set to zero, ranked globally by |w|")
    ignored_layers: tuple[str, ...] = setting((), help="Conv2d/Linear layers (torch module names) left dense")
    skip_first_and_last: bool = setting(True, help="leave the first and last Conv2d/Linear layers dense: the stem and "
                                                   "classifier are small and the most sensitive")

    def __post_init__(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")


def _prunable(model, settings: SparsifySettings) -> list[tuple[str, object]]:
    import torch

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    require_layers(model, settings.ignored_layers, setting="ignored_layers", candidates=[n for n, _ in layers])
    if settings.skip_first_and_last and len(layers) > 2:
        layers = layers[1:-1]
    return [(n, m) for n, m in layers if n not in settings.ignored_layers]


def sparsify(model, *, settings: SparsifySettings):
    """(sparse copy of `model`, achieved sparsity of the prunable weights)."""
    import torch

    sparse = copy.deepcopy(model)
    layers = _prunable(sparse, settings)
    if not layers:
        raise UserError("the model has no Conv2d or Linear weights left to sparsify", fix="shorten ignored_layers")
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
    count = int(settings.sparsity * magnitudes.numel())
    # kthvalue picks the exact global threshold; ties at it are all zeroed, so count is a floor.
    threshold = magnitudes.kthvalue(count).values if count > 0 else magnitudes.min() - 1
    zeros = 0
    with torch.no_grad():
        for _, module in layers:
            keep = module.weight.abs() > threshold
            module.weight.mul_(keep)
            zeros += int((~keep).sum())
    return sparse, zeros / magnitudes.numel()


def run(source: Artifact, settings: SparsifySettings, ctx: StageContext) -> StageOutput:
    from edgepress.io import torch_artifact
    from edgepress.measure.sizes import gzip_size_bytes

    model, input_shape, builder = torch_artifact.load(source.path)
    sparse, achieved = sparsify(model, settings=settings)
    params = torch_artifact.count_params(sparse)
    zero_params = sum(int((p == 0).sum()) for p in sparse.parameters())
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=sparse, builder=builder, input_shape=input_shape)
    ctx.log(f"sparsity {achieved:.4f} of prunable weights; {zero_params}/{params} parameters are zero")
    summary = {"sparsity_target": settings.sparsity, "sparsity_prunable": achieved,
               "sparsity_all_params": zero_params / params, "size_gzip_bytes_before": gzip_size_bytes(source.path),
               "size_gzip_bytes_after": gzip_size_bytes(out)}
    return StageOutput(artifact=Artifact(path=out, format="torch"), metrics={"sparsity": summary})


STAGE = StageDef(kind="sparsify", settings_type=SparsifySettings, input_format="torch", output_format="torch",
                 run=run, check_names=lambda settings, model: _prunable(model, settings), summary="unstructured magnitude pruning: zeros in dense tensors (smaller gzip, same latency)")
