"""Reading and writing the user's files: data arrays and sets, ONNX and torch model files, archives."""
