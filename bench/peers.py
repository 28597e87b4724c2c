"""Peers' INT8 post-training quantizers, each called on an ONNX file the way its documentation shows a user.

- NNCF (`nncf.quantize` on an onnx.ModelProto): its defaults (performance preset, fast bias correction).
- Intel Neural Compressor for ONNX (`onnx_neural_compressor`, the ONNX half of INC since INC 3 left it):
  `StaticQuantConfig` at its defaults (QOperator, per-tensor, MinMax), and at the settings closest to ours
  (QDQ, per-channel).

Both pin libraries edgepress does not (INC numpy < 2, transformers), so they live in a virtual environment of
their own that sees this one's packages:

    python -m venv --system-site-packages .venv-peers
    .venv-peers/bin/pip install -e '.[peers]'        # pyproject.toml's `peers` extra
    .venv-peers/bin/python bench/int8_vs_plain_ort.py --peers
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

INSTALL = ("python -m venv --system-site-packages .venv-peers && .venv-peers/bin/pip install -e '.[peers]', "
           "then run this with .venv-peers/bin/python")


def _input_name(source: Path) -> str:
    import onnx

    return onnx.load(str(source), load_external_data=False).graph.input[0].name


def nncf_defaults(source: Path, out: Path, calibration: np.ndarray) -> None:
    import nncf
    import onnx

    name = _input_name(source)
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))], lambda x: {name: x})
    quantized = nncf.quantize(onnx.load(str(source)), dataset, subset_size=len(calibration))
    onnx.save(quantized, str(out))


class _Reader:
    """onnx_neural_compressor's CalibrationDataReader: get_next and rewind over batches of 32."""

    def __init__(self, name: str, calibration: np.ndarray) -> None:
        self._batches = [{name: calibration[i:i + 32]} for i in range(0, len(calibration), 32)]
        self._index = 0

    def get_next(self):
        if self._index >= len(self._batches):
            return None
        self._index += 1
        return self._batches[self._index - 1]

    def rewind(self) -> None:
        self._index = 0

    def __len__(self) -> int:
        return len(self._batches)


def _inc(source: Path, out: Path, calibration: np.ndarray, **options) -> None:
    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config, quantize

    reader_type = type("Reader", (_Reader, data_reader.CalibrationDataReader), {})
    settings = config.StaticQuantConfig(reader_type(_input_name(source), calibration),
                                        calibration_sampling_size=len(calibration), **options)
    quantize(source, out, settings)


def inc_defaults(source: Path, out: Path, calibration: np.ndarray) -> None:
    _inc(source, out, calibration)


def inc_qdq_per_channel(source: Path, out: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat

    _inc(source, out, calibration, quant_format=QuantFormat.QDQ, per_channel=True)


PEERS: dict[str, Callable[[Path, Path, np.ndarray], None]] = {
    "NNCF 3.4 defaults": nncf_defaults,
    "INC (onnx) 1.0 defaults": inc_defaults,
    "INC (onnx) 1.0 QDQ per-channel": inc_qdq_per_channel,
}


def missing() -> str | None:
    """None when both peers import, else what is missing."""
    try:
        import nncf  # noqa: F401
        import onnx_neural_compressor  # noqa: F401
    except ImportError as error:
        return str(error)
    return None
