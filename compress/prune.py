"""`prune`: structural channel pruning with torch-pruning; channels are removed, not masked.

Separated as Torch-Pruning does: what is coupled (torch-pruning's dependency graph, plus the
layers a model declares unprunable), how channels are scored (`importance`), and when they
are cut (a fixed `channel_ratio`, or the ratio found by bisection for a `macs_target`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from edgepress.errors import UserError
from edgepress.schema import closest
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
class PruneSettings:
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = "l1"
    channel_ratio: float | None = None  # share of each prunable layer's channels to remove
    macs_target: float | None = None  # keep at most this share of the model's MACs
    global_ranking: bool = False
    ignored_layers: tuple[str, ...] = ()
    round_to: int | None = None  # kept channels a multiple of this (8 or 16 suit SIMD kernels)
    taylor_samples: int = 256

    def __post_init__(self) -> None:
        if (self.channel_ratio is None) == (self.macs_target is None):
            raise ValueError("give exactly one of channel_ratio or macs_target")
        for key in ("channel_ratio", "macs_target"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {value}")
        if self.round_to is not None and self.round_to <= 0:
            raise ValueError("round_to must be positive")


def _importance(kind: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "bn_scale": lambda: tp.importance.BNScaleImportance(),
            "taylor": lambda: tp.importance.TaylorImportance()}[kind]()


def _ignored(model, settings: PruneSettings) -> list:
    import torch

    modules = dict(model.named_modules())
    ignored = []
    for name in settings.ignored_layers:
        if name not in modules:
            guess = closest(name, [n for n in modules if n])
            raise UserError(f"ignored_layers names {name!r}, which matches no layer of the model",
                            fix=f"did you mean {guess!r}?" if guess else "use module names as in model.named_modules()")
        ignored.append(modules[name])
    declared = getattr(model, "unprunable_layers", None)
    if callable(declared):
        ignored += list(declared())
    # The classifier's outputs are the classes: never prunable.
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if layers:
        ignored.append(layers[-1])
    return ignored


def prune_copy(model, *, example, ratio: float, settings: PruneSettings, calibration=None):
    """A pruned deep copy of `model` (the input model is never changed)."""
    import torch
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    pruned.eval()
    importance = _importance(settings.importance)
    try:
        pruner = tp.pruner.MetaPruner(pruned, example, importance=importance, pruning_ratio=ratio,
                                      ignored_layers=_ignored(pruned, settings), global_pruning=settings.global_ranking,
                                      round_to=settings.round_to)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"torch-pruning cannot trace this model: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                        fix="list the layers around the failing operation in ignored_layers") from None
    if settings.importance == "taylor":
        if calibration is None:
            raise UserError("taylor importance needs data", fix="add [data.training] or [data.calibration]")
        pruned.zero_grad()
        inputs, labels = calibration
        torch.nn.functional.cross_entropy(pruned(inputs), labels).backward()
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned


def prune_to_macs(model, *, input_shape: tuple[int, ...], settings: PruneSettings, calibration=None):
    """(pruned copy, ratio): the smallest ratio whose MACs are at most settings.macs_target of the model's."""
    import torch

    from edgepress import torch_artifact

    example = torch.zeros(1, *input_shape)
    limit = settings.macs_target * torch_artifact.count_macs(model, input_shape)
    # MACs fall monotonically with the ratio, so bisect.
    low, high, best = 0.0, 0.95, None
    for _ in range(12):
        middle = (low + high) / 2
        candidate = prune_copy(model, example=example, ratio=middle, settings=settings, calibration=calibration)
        if torch_artifact.count_macs(candidate, input_shape) <= limit:
            high, best = middle, (candidate, middle)
        else:
            low = middle
    if best is None:
        raise UserError(f"macs_target {settings.macs_target} cannot be reached with the prunable layers",
                        fix="raise macs_target, or take layers out of ignored_layers")
    return best


def run(source: Artifact, settings: PruneSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress import torch_artifact

    model, input_shape, builder = torch_artifact.load(source.path)
    example = torch.zeros(1, *input_shape)
    calibration = None
    if settings.importance == "taylor":
        labeled = ctx.data.training if ctx.recipe.data.training is not None else ctx.data.calibration
        calibration = (torch.from_numpy(labeled.inputs[:settings.taylor_samples]),
                       torch.from_numpy(labeled.labels[:settings.taylor_samples]))
    macs_before = torch_artifact.count_macs(model, input_shape)
    params_before = torch_artifact.count_params(model)

    if settings.channel_ratio is not None:
        ratio = settings.channel_ratio
        pruned = prune_copy(model, example=example, ratio=ratio, settings=settings, calibration=calibration)
    else:
        pruned, ratio = prune_to_macs(model, input_shape=input_shape, settings=settings, calibration=calibration)
    macs_after = torch_artifact.count_macs(pruned, input_shape)
    params_after = torch_artifact.count_params(pruned)
    ctx.log(f"ratio {ratio:.4f}: MACs {macs_before} -> {macs_after}, params {params_before} -> {params_after}")
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=pruned, builder=builder, input_shape=input_shape)
    kept = {name: int(m.out_channels) for name, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    summary: dict[str, Any] = {"importance": settings.importance, "channel_ratio": round(ratio, 4),
                               "macs_before": macs_before, "macs_after": macs_after, "macs_kept": macs_after / macs_before,
                               "params_before": params_before, "params_after": params_after, "conv_out_channels": kept}
    return StageOutput(artifact=Artifact(path=out, format="torch"), metrics={"pruning": summary})


STAGE = StageDef(kind="prune", settings_type=PruneSettings, input_format="torch", output_format="torch", run=run,
                 summary="structural channel pruning (torch-pruning): channels are removed, not masked")
