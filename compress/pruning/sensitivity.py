"""Pruning sensitivity: the accuracy each prunable layer keeps when it alone loses a share of its channels.

Quick by design (one pruned copy per layer and ratio, scored by the caller's `evaluate`, usually
accuracy on a few hundred images), stored in the report with a plot (`edgepress.report.writer`), and
used to choose per-layer ratios for a MAC target: `ratios_for_macs_target` returns
{module name: ratio}, which `prune_with_layer_ratios` hands to torch-pruning's `pruning_ratio_dict`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable

from edgepress.compress.pruning.channels import cut, make_pruner, prunable_layers, prune_with_layer_ratios
from edgepress.compress.pruning.settings import PruneSettings
from edgepress.core.errors import UserError
from edgepress.core.progress import Progress
from edgepress.core.schema import closest


@dataclass(frozen=True)
class SensitivityPoint:
    ratio: float  # share of the layer's output channels removed
    accuracy: float  # evaluate() of the model with only this layer pruned
    macs: int  # MACs of that whole model


@dataclass(frozen=True)
class SensitivityTable:
    baseline_accuracy: float
    baseline_macs: int
    layers: dict[str, tuple[SensitivityPoint, ...]]  # module name -> points by increasing ratio

    def to_json(self) -> dict[str, Any]:
        return {"baseline_accuracy": self.baseline_accuracy, "baseline_macs": self.baseline_macs,
                "layers": {name: [asdict(p) for p in points] for name, points in self.layers.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SensitivityTable:
        return cls(baseline_accuracy=float(data["baseline_accuracy"]), baseline_macs=int(data["baseline_macs"]),
                   layers={name: tuple(SensitivityPoint(**p) for p in points) for name, points in data["layers"].items()})


def layer_sensitivity(model, *, input_shape: tuple[int, ...], layers: list[str],
                      ratios: tuple[float, ...] = (0.25, 0.5, 0.75), settings: PruneSettings,
                      evaluate: Callable[[Any], float], calibration=None) -> SensitivityTable:
    """Prune each layer alone at each ratio (on copies) and score it with `evaluate(model) -> accuracy`.

    One copy and one dependency graph per layer, cut further at each larger ratio, because tracing
    costs about as much as evaluating: with magnitude importance (l1, l2, bn_scale) a channel's
    score does not depend on which others are gone, so the kept channels are exactly those of a
    one-shot cut at that ratio; taylor re-scores the remaining channels at each step."""
    import torch

    from edgepress.io import torch_artifact

    ratios = tuple(sorted(ratios))
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise UserError(f"sensitivity ratios must lie in (0, 1), got {list(ratios)}", fix="use e.g. [0.25, 0.5, 0.75]")
    known = prunable_layers(model, input_shape=input_shape, settings=settings)
    for name in layers:
        if name not in known:  # an ignored layer would silently keep all its channels: a flat, misleading line
            guess = closest(name, known)
            raise UserError(f"sensitivity layer {name!r} is not a prunable layer of the model",
                            fix=f"did you mean {guess!r}?" if guess else f"prunable layers: {', '.join(known)}")
    example = torch.zeros(1, *input_shape)
    # evaluate() gets copies only: it cannot change the caller's model or a later step's.
    baseline = copy.deepcopy(model).eval()
    table: dict[str, tuple[SensitivityPoint, ...]] = {}
    progress = Progress("sensitivity", total=len(layers) * len(ratios))
    for index, name in enumerate(layers):
        pruned = copy.deepcopy(model).eval()
        pruner = make_pruner(pruned, example=example, layer_ratios={name: ratios[-1]}, settings=settings,
                         steps=tuple(r / ratios[-1] for r in ratios))
        points = []
        for ratio in ratios:
            cut(pruner, pruned, settings=settings, calibration=calibration)
            macs = torch_artifact.count_macs(pruned, input_shape)
            points.append(SensitivityPoint(ratio=ratio, accuracy=float(evaluate(copy.deepcopy(pruned))), macs=macs))
            progress.update(index * len(ratios) + len(points), note=f"{name} @ {ratio:g}: {points[-1].accuracy:.3f}")
        table[name] = tuple(points)
    return SensitivityTable(baseline_accuracy=float(evaluate(baseline)),
                            baseline_macs=torch_artifact.count_macs(baseline, input_shape), layers=table)


def ratios_for_macs_target(table: SensitivityTable, *, macs_target: float) -> dict[str, float]:
    """Per-layer ratios whose estimated MACs are at most `macs_target` of the baseline's, losing least accuracy.

    The heuristic, and why: pruning several layers is modelled as the sum of their single-layer
    accuracy drops and MAC savings (first order; exact for MACs when the groups share no layer, as
    in a ResNet's blocks). Each layer's curve is its table, linear between ratios, 0 at ratio 0;
    drops are clamped to >= 0 and made non-decreasing in the ratio, since on a small subset a gain
    from pruning is noise. Choosing one ratio per layer under a MAC budget is then a multiple-choice
    knapsack, and the classic greedy solves its convex relaxation: repeatedly move the layer whose
    next step (to any larger tabulated ratio, which walks the lower convex hull of its curve) costs
    the least accuracy per MAC saved, and stop part-way through the last step once the target is met.
    Ties prefer the smaller resulting ratio, spreading cuts over layers the subset cannot tell apart.
    Ratios never exceed the largest one measured: the table says nothing beyond it.
    """
    if not 0.0 < macs_target < 1.0:
        raise UserError(f"macs_target must be in (0, 1), got {macs_target}", fix="give the share of MACs to keep, e.g. 0.5")
    curves = {}
    for name, points in table.layers.items():
        ratios, drops, saved = [0.0], [0.0], [0.0]
        for p in sorted(points, key=lambda p: p.ratio):
            ratios.append(p.ratio)
            drops.append(max(drops[-1], table.baseline_accuracy - p.accuracy))
            saved.append(max(saved[-1], float(table.baseline_macs - p.macs)))
        curves[name] = (ratios, drops, saved)
    needed_macs = (1.0 - macs_target) * table.baseline_macs
    at = {name: 0 for name in curves}  # index into each curve
    chosen = {name: 0.0 for name in curves}
    saved_macs = 0.0
    while saved_macs < needed_macs:
        best = None
        for name, (ratios, drops, saved) in curves.items():
            i = at[name]
            for j in range(i + 1, len(ratios)):
                if saved[j] > saved[i]:
                    key = ((drops[j] - drops[i]) / (saved[j] - saved[i]), ratios[j])
                    if best is None or key < best[0]:
                        best = (key, name, j)
        if best is None:
            reachable = 1.0 - saved_macs / table.baseline_macs
            raise UserError(f"macs_target {macs_target} is beyond the measured ratios (at most {reachable:.3f} of the MACs)",
                            fix="raise macs_target, or measure sensitivity at larger ratios")
        _, name, j = best
        ratios, _, saved = curves[name]
        i = at[name]
        step_macs = saved[j] - saved[i]
        share = min(1.0, (needed_macs - saved_macs) / step_macs)
        chosen[name] = ratios[i] + share * (ratios[j] - ratios[i])
        saved_macs += share * step_macs
        at[name] = j
    return {name: round(ratio, 4) for name, ratio in chosen.items()}


def prune_to_macs_by_sensitivity(model, *, input_shape: tuple[int, ...], table: SensitivityTable, macs_target: float,
                                 settings: PruneSettings, calibration=None, attempts: int = 8):
    """(pruned copy, layer ratios) with MACs really at most `macs_target` of the model's.

    The greedy's MAC estimate adds single-layer savings; where two pruned groups share a layer
    (one's outputs feed the other's inputs, as in a MobileNet) the real saving is smaller, and
    channel rounding shifts it too. So measure, and while over the limit ask the greedy for more
    estimated savings in the proportion the real ones fell short, and plan again."""
    import torch

    from edgepress.io import torch_artifact

    baseline_macs = torch_artifact.count_macs(model, input_shape)
    aim, best_kept = macs_target, 1.0
    for _ in range(attempts):
        try:
            layer_ratios = ratios_for_macs_target(table, macs_target=aim)
        except UserError:
            if aim == macs_target:
                raise
            break  # the corrected aim lies beyond the measured ratios
        pruned = prune_with_layer_ratios(model, example=torch.zeros(1, *input_shape), layer_ratios=layer_ratios,
                                         settings=settings, calibration=calibration)
        kept = torch_artifact.count_macs(pruned, input_shape) / baseline_macs
        if kept <= macs_target:
            return pruned, layer_ratios
        best_kept = min(best_kept, kept)
        # Real savings were (1 - kept) / (1 - aim) of the estimate's; a hair more, so rounding cannot stall.
        aim = 1.0 - 1.001 * (1.0 - macs_target) * (1.0 - aim) / max(1.0 - kept, 1e-9)
    raise UserError(f"per-layer ratios reach at best {best_kept:.3f} of the MACs, not macs_target {macs_target}: "
                    "coupled layers save less than the sum of their single-layer savings",
                    fix="raise macs_target, measure sensitivity at larger ratios, or use a uniform channel_ratio")
