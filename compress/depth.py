"""`prune_depth`: remove whole residual blocks, the least important first.

A block is removable when, without its branch, it is the identity (the model says which through
a `removable_blocks()` method). A block's importance is how far the model's output moves, as
KL divergence from the unpruned model's predictions on calibration images, when it is removed:
no labels needed, and it measures exactly what distillation must later recover. Greedy ranking
re-scores the remaining blocks after each removal, because removing two neighbours hurts more
than the sum of removing each (Veit et al. 2016 found single blocks nearly free to drop).
Fewer layers cut latency more than MACs suggest: per-operator overhead dominates small convs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from edgepress.errors import UserError
from edgepress.schema import SAMPLES, bounded, closest, within
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
@bounded
class DepthSettings:
    blocks: int | None = within(1, 10000, default=None)  # remove this many blocks
    macs_target: float | None = None  # or remove blocks until MACs are at most this share
    ranking: Literal["greedy", "one_shot"] = "greedy"
    keep: tuple[str, ...] = ()  # blocks never removed
    # Calibration images used to score blocks (each removal re-scores every block).
    samples: int = within(*SAMPLES, default=256)

    def __post_init__(self) -> None:
        if (self.blocks is None) == (self.macs_target is None):
            raise ValueError("give exactly one of blocks or macs_target")
        if self.macs_target is not None and not 0.0 < self.macs_target < 1.0:
            raise ValueError(f"macs_target must be in (0, 1), got {self.macs_target}")


def removable_blocks(model, *, keep: tuple[str, ...] = ()) -> list[str]:
    declared = getattr(model, "removable_blocks", None)
    if not callable(declared):
        raise UserError(f"{type(model).__name__} does not say which blocks can be removed",
                        fix="give the model a removable_blocks() method returning block names, or use channel pruning")
    names = list(declared())
    for name in keep:
        if name not in names:
            guess = closest(name, names)
            raise UserError(f"keep names {name!r}, which is not a removable block",
                            fix=f"did you mean {guess!r}?" if guess else f"removable blocks: {', '.join(names)}")
    return [n for n in names if n not in keep]


def _output_shift(model, inputs, reference_log_probs, *, batch_size: int = 256) -> float:
    """KL(reference || model) in nats per sample."""
    import torch

    total = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            log_probs = torch.log_softmax(model(inputs[start:start + batch_size]), 1)
            ref = reference_log_probs[start:start + batch_size]
            total += float((ref.exp() * (ref - log_probs)).sum())
    return total / len(inputs)


def remove_blocks(model, *, inputs, settings: DepthSettings, input_shape: tuple[int, ...], log=lambda m: None):
    """(copy of `model` with blocks replaced by identity, removed names in order, score per step)."""
    import torch

    from edgepress import torch_artifact
    from edgepress.progress import Progress

    work = copy.deepcopy(model).eval()
    candidates = removable_blocks(work, keep=settings.keep)
    modules = dict(work.named_modules())
    macs_before = torch_artifact.count_macs(work, input_shape)
    with torch.no_grad():
        reference = torch.log_softmax(work(inputs), 1)

    def swap(name: str, module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else work, child, module)

    def scores(names: list[str]) -> dict[str, float]:
        out = {}
        for name in names:
            swap(name, torch.nn.Identity())
            out[name] = _output_shift(work, inputs, reference)
            swap(name, modules[name])
        return out

    removed: list[dict[str, Any]] = []
    limit = None if settings.macs_target is None else settings.macs_target * macs_before
    wanted = settings.blocks if settings.blocks is not None else len(candidates)
    if settings.blocks is not None and settings.blocks > len(candidates):
        raise UserError(f"blocks = {settings.blocks}, but the model has only {len(candidates)} removable blocks",
                        fix=f"set blocks to at most {len(candidates)}")
    progress = Progress("prune_depth", total=wanted if limit is None else len(candidates))
    ranked = scores(candidates) if settings.ranking == "one_shot" else None
    while len(removed) < wanted:
        remaining = [n for n in candidates if n not in {r["block"] for r in removed}]
        if not remaining:
            break
        current = ranked if ranked is not None else scores(remaining)
        name = min(remaining, key=lambda n: current[n])
        swap(name, torch.nn.Identity())
        macs = torch_artifact.count_macs(work, input_shape)
        removed.append({"block": name, "score_kl": round(current[name], 6), "macs_kept": macs / macs_before,
                        "output_kl_after": round(_output_shift(work, inputs, reference), 6)})
        log(f"removed {name}: KL {current[name]:.5f}, MACs kept {macs / macs_before:.3f}")
        progress.update(len(removed), note=f"{name} MACs {macs / macs_before:.2f}")
        if limit is not None and macs <= limit:
            break
    if limit is not None and removed[-1]["macs_kept"] * macs_before > limit:
        raise UserError(f"removing every removable block keeps {removed[-1]['macs_kept']:.3f} of the MACs, "
                        f"above macs_target {settings.macs_target}",
                        fix="raise macs_target, or add channel pruning (a prune stage) after this one")
    return work, removed


def run(source: Artifact, settings: DepthSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress import torch_artifact

    model, input_shape, builder = torch_artifact.load(source.path)
    images = ctx.data.calibration.inputs[:settings.samples]
    pruned, removed = remove_blocks(model, inputs=torch.from_numpy(images), settings=settings,
                                    input_shape=input_shape, log=ctx.log)
    before, after = torch_artifact.count_macs(model, input_shape), torch_artifact.count_macs(pruned, input_shape)
    out = ctx.output_path("torch")
    names = list(builder.get("removed_blocks", [])) + [r["block"] for r in removed]
    torch_artifact.save(out, model=pruned, builder={**builder, "removed_blocks": names}, input_shape=input_shape)
    summary = {"removed": removed, "blocks_removed": len(removed), "macs_before": before, "macs_after": after,
               "macs_kept": after / before, "params_before": torch_artifact.count_params(model),
               "params_after": torch_artifact.count_params(pruned), "ranking": settings.ranking}
    return StageOutput(artifact=Artifact(path=out, format="torch"), metrics={"depth_pruning": summary})


STAGE = StageDef(kind="prune_depth", settings_type=DepthSettings, input_format="torch", output_format="torch",
                 run=run, needs=("calibration",), check_names=lambda settings, model: removable_blocks(model, keep=settings.keep),
                 summary="depth pruning: remove whole residual blocks, least important (output KL) first")
