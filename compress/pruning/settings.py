"""The `prune` stage's settings: what is coupled (ignored_layers, round_to), how channels are scored (importance,
sensitivity), and when they are cut (channel_ratio, or a MACs or latency target reached in steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgepress.core.schema import BATCH, EPOCHS, SAMPLES, bounded, within


@dataclass(frozen=True)
@bounded
class PruneSettings:
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = "l1"
    channel_ratio: float | None = None  # share of each prunable layer's channels to remove
    macs_target: float | None = None  # keep at most this share of the MACs (of macs_reference)
    macs_reference: Literal["input", "source"] = "input"  # source: the recipe's model, before earlier stages
    latency_ratio: float | None = None  # ONNX Runtime p50 at most this share of the unpruned model's, measured
    # ONNX Runtime p50 at most this, measured on the recipe's target.
    latency_target_ms: float | None = within(0, 3_600_000, default=None, low_open=True)
    global_ranking: bool = False
    ignored_layers: tuple[str, ...] = ()
    round_to: int | None = within(1, 1024, default=None)  # kept channels a multiple of this (8 or 16 suit SIMD kernels)
    taylor_samples: int = within(*SAMPLES, default=256)
    sensitivity: Literal["off", "report", "allocate"] = "off"  # allocate: per-layer ratios from the analysis
    sensitivity_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    sensitivity_samples: int = within(*SAMPLES, default=512)  # calibration images scoring each pruned copy
    steps: int = within(1, 100, default=1)  # iterative schedule: prune a share, fine-tune, repeat
    # Fine-tuning epochs after every step but the last (distillation from the input model).
    step_epochs: int = within(0, EPOCHS[1], default=1)
    step_learning_rate: float = within(0, 10, default=0.01, low_open=True)
    step_batch_size: int = within(*BATCH, default=128)

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
