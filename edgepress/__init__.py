"""edgepress: from a trained PyTorch model to a small, fast, validated ONNX model.

This package must stay importable without torch: `edgepress.runtime` runs on
devices that have only onnxruntime and numpy.
"""

__version__ = "0.1.0"
