"""torch -> ONNX stages."""
