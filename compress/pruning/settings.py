"""The `prune` stage's settings: what is coupled (ignored_layers, round_to), how channels are scored (importance,
sensitivity), and when they are cut (channel_ratio, or a MACs or latency target reached in steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgepress.core.schema import BATCH, EPOCHS, SAMPLES, bounded, setting, within


@dataclass(frozen=True)
@bounded
class PruneSettings:
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = setting(
        "l1", help='how channels are scored, the lowest cut first: "l1" or "l2" the norm of their weights, '
                   '"bn_scale" the magnitude of their BatchNorm scale, "taylor" weight times cross-entropy gradient '
                   "on taylor_samples labelled samples")
    channel_ratio: float | None = setting(None, help="share, in (0, 1), of each prunable layer's channels to remove; "
                                                     "or give a MACs or latency target instead")
    macs_target: float | None = setting(None, help="keep at most this share, in (0, 1), of the MACs (of "
                                                   "macs_reference)")
    macs_reference: Literal["input", "source"] = setting(
        "input", help="what macs_target is a share of: \"input\", this stage's input model; \"source\", the "
                      "recipe's model, before earlier stages")
    latency_ratio: float | None = setting(None, help="ONNX Runtime p50 at most this share, in (0, 1), of the "
                                                     "unpruned model's, measured on the recipe's target")
    latency_target_ms: float | None = within(0, 3_600_000, default=None, low_open=True,
                                             help="ONNX Runtime p50 at most this, in ms, measured on the recipe's "
                                                  "target")
    global_ranking: bool = setting(False, help="rank channels across all layers together, so layers lose different "
                                               "shares; false: every layer loses the same share")
    ignored_layers: tuple[str, ...] = setting(
        (), help="layers (torch module names) never pruned, beside those the model declares unprunable and its "
                 "output layers")
    round_to: int | None = within(1, 1024, default=None,
                                  help="kept channels a multiple of this (8 or 16 suit SIMD kernels); unset: any count")
    taylor_samples: int = within(*SAMPLES, default=256,
                                 help='importance "taylor": labelled samples (training set, else calibration) whose '
                                      "gradients score the channels")
    sensitivity: Literal["off", "report", "allocate"] = setting(
        "off", help='each layer\'s accuracy against the share of it pruned (classifiers): "report" measures and '
                    'reports it, "allocate" also spreads the cut over the layers by it (for a MACs or latency '
                    'target); "off": no analysis')
    sensitivity_ratios: tuple[float, ...] = setting(
        (0.25, 0.5, 0.75), help="shares, each in (0, 1), at which every layer is pruned alone and scored by the "
                                "sensitivity analysis")
    sensitivity_samples: int = within(*SAMPLES, default=512,
                                      help="calibration images scoring each pruned copy in the sensitivity analysis")
    steps: int = within(1, 100, default=1, help="iterative schedule: prune a share, fine-tune, repeat, in this many "
                                                "steps; 1: one cut")
    step_epochs: int = within(0, EPOCHS[1], default=1,
                              help="fine-tuning epochs after every step but the last (distillation from the input "
                                   "model); 0: none")
    step_learning_rate: float = within(0, 10, default=0.01, low_open=True,
                                       help="learning rate of the fine-tuning between steps")
    step_batch_size: int = within(*BATCH, default=128, help="batch size of the fine-tuning between steps")

    def __post_init__(self) -> None:
        targets = [k for k in ("macs_target", "latency_ratio", "latency_target_ms") if getattr(self, k) is not None]
        if (self.channel_ratio is None) == (not targets):
            raise ValueError("give channel_ratio, or one or more of macs_target, latency_ratio, latency_target_ms")
        for key in ("channel_ratio", "macs_target", "latency_ratio"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {value}")
        if self.sensitivity == "allocate" and self.channel_ratio is not None:
            raise ValueError("sensitivity = \"allocate\" chooses per-layer ratios for a macs_target or latency "
                             "target; with channel_ratio every layer gets the same ratio")
        if not self.sensitivity_ratios or not all(0.0 < r < 1.0 for r in self.sensitivity_ratios):
            raise ValueError("sensitivity_ratios must be in (0, 1)")

    @property
    def measures_latency(self) -> bool:
        return self.latency_ratio is not None or self.latency_target_ms is not None
