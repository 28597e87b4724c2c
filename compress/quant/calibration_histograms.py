"""ONNX Runtime's histogram calibration, kept alive on tensors that barely vary.

Percentile calibration (onnxruntime/quantization/calibrate.py, HistogramCollector.collect_absolute_value)
bins the first batch of a tensor's |values| into 2,048 bins between their float32 minimum and maximum.
When those lie only a few thousand float32 steps apart, numpy cannot make 2,048 distinct float32 edges and raises
"Too many bins for data range" out of `quantize_static`. Real models do this: a squeeze-excitation
gate (hardsigmoid or sigmoid of a near-zero input) sits at 0.5 +- 1e-5 on every image of a
barely-trained MobileNetV3 or EfficientNet.

While `quantize_static` runs, the calibrator's `np.histogram` is one that, only where numpy refuses,
widens the upper edge just enough for distinct bins (4 float32 steps each). Every value is still
counted; the range found moves by at most bins x 4 steps (5e-4 at 0.5), far below one int8 step.
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import numpy as np

# Float32 steps per bin in the widened range: enough that float32 edges stay strictly increasing.
_STEPS_PER_BIN = 4


def _histogram(a, bins=10, range=None, **kwargs):  # noqa: A002 (numpy's own signature)
    try:
        return np.histogram(a, bins, range, **kwargs)
    except ValueError:
        # Only the first batch's call (a bin count, its own range) can hit it: later batches pass edges.
        if not isinstance(bins, int) or range is not None or np.size(a) == 0:
            raise
        low, high = float(np.nanmin(a)), float(np.nanmax(a))
        step = float(np.spacing(np.float32(max(abs(low), abs(high)))))
        return np.histogram(a, bins, (low, max(high, low + bins * _STEPS_PER_BIN * step)), **kwargs)


class _NumpyWithSafeHistogram(types.ModuleType):
    """numpy, as calibrate.py sees it, except for `histogram`."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.histogram = _histogram

    def __getattr__(self, name: str):
        return getattr(np, name)


@contextlib.contextmanager
def narrow_range_histograms() -> Iterator[None]:
    from onnxruntime.quantization import calibrate

    if getattr(calibrate, "np", None) is not np:  # another ONNX Runtime layout: leave it as it is
        yield
        return
    calibrate.np = _NumpyWithSafeHistogram()
    try:
        yield
    finally:
        calibrate.np = np
