"""`prune_depth`: remove whole residual blocks, the least important first.

A block is removable when, without its branch, it is the identity (the model says which through
a `removable_blocks()` method). A block's importance is how far the model's output moves, as
KL divergence from the unpruned model's predictions on calibration images (for a model that is no classifier,
the squared error of every output relative to its power), when it is removed:
no labels needed, and it measures exactly what distillation must later recover. Greedy ranking
re-scores the remaining blocks after each removal, because removing two neighbours hurts more
than the sum of removing each (Veit et al. 2016 found single blocks nearly free to drop).
Fewer layers cut latency more than MACs suggest: per-operator overhead dominates small convs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from edgepress.core.errors import UserError
from edgepress.core.schema import SAMPLES, bounded, closest, setting, within
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
@bounded
class DepthSettings:
    blocks: int | None = within(1, 10000, default=None, help="remove this many residual blocks")
    macs_target: float | None = setting(None, help="or remove blocks until the MACs are at most this share, in "
                                                   "(0, 1), of the input model's")
    ranking: Literal["greedy", "one_shot"] = setting(
        "greedy", help='"greedy": every block re-scored after each removal (removing two neighbours hurts more than '
                       'the sum of each); "one_shot": scored once, faster')
    keep: tuple[str, ...] = setting((), help="blocks never removed, by the names the model's removable_blocks() gives")
    samples: int = within(*SAMPLES, default=256, help="calibration samples used to score blocks (each removal "
                                                      "re-scores every block)")

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


def _outputs(model, inputs, *, batch_size: int = 256) -> dict:
    """Every output of `model` on `inputs` (a tensor, or a dict of a several-input model's), by name."""
    import torch

    from edgepress.compress.training.loop import _count, _take, call
    from edgepress.io.torch_outputs import flatten

    chunks = []
    with torch.no_grad():
        for start in range(0, _count(inputs), batch_size):
            chunks.append(flatten(call(model, _take(inputs, slice(start, start + batch_size)))))
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


def _output_shift(model, inputs, reference: dict, *, classes: bool) -> float:
    """How far the outputs moved from `reference`: KL(reference || model) in nats per sample for a classifier's
    class scores; for any other model, the squared error over every float output relative to its power."""
    import torch

    outputs = _outputs(model, inputs)
    if classes:
        (name, ref), = reference.items()
        log_probs, ref_log = torch.log_softmax(outputs[name], 1), torch.log_softmax(ref, 1)
        return float((ref_log.exp() * (ref_log - log_probs)).sum()) / len(ref)
    floats = [k for k, v in reference.items() if v.is_floating_point()]
    return float(sum(((outputs[k] - reference[k]) ** 2).sum() for k in floats)
                 / max(sum((reference[k] ** 2).sum() for k in floats), 1e-12))


def remove_blocks(model, *, inputs, settings: DepthSettings, input_shape: tuple[int, ...], log=lambda m: None,
                  classes: bool = True, inputs_spec: dict | None = None):
    """(copy of `model` with blocks replaced by identity, removed names in order, score per step)."""
    import torch

    from edgepress.io import torch_artifact
    from edgepress.core.progress import Progress

    work = copy.deepcopy(model).eval()
    candidates = removable_blocks(work, keep=settings.keep)
    modules = dict(work.named_modules())
    macs_before = torch_artifact.count_macs(work, input_shape, inputs=inputs_spec)
    reference = _outputs(work, inputs)
    classes = classes and len(reference) == 1 and next(iter(reference.values())).dim() == 2

    def swap(name: str, module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else work, child, module)

    def scores(names: list[str]) -> dict[str, float]:
        out = {}
        for name in names:
            swap(name, torch.nn.Identity())
            out[name] = _output_shift(work, inputs, reference, classes=classes)
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
        macs = torch_artifact.count_macs(work, input_shape, inputs=inputs_spec)
        shift = "kl" if classes else "relative_error"
        removed.append({"block": name, f"score_{shift}": round(current[name], 6), "macs_kept": macs / macs_before,
                        f"output_{shift}_after": round(_output_shift(work, inputs, reference, classes=classes), 6)})
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

    from edgepress.io import torch_artifact

    model, input_shape, builder = torch_artifact.load(source.path)
    feeds = {k: torch.from_numpy(v[:settings.samples]) for k, v in ctx.data.calibration.feeds.items()}
    inputs = next(iter(feeds.values())) if len(feeds) == 1 else feeds
    spec = builder.get("inputs")
    pruned, removed = remove_blocks(model, inputs=inputs, settings=settings, input_shape=input_shape, log=ctx.log,
                                    classes=ctx.task is None or ctx.task.metric.key == "top1", inputs_spec=spec)
    before = torch_artifact.count_macs(model, input_shape, inputs=spec)
    after = torch_artifact.count_macs(pruned, input_shape, inputs=spec)
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
