"""Quantization algorithms the INT8 stages call (ONNX graphs in, ONNX graphs out); no stage lives here."""
