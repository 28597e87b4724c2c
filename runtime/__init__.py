"""What runs on a device: ONNX Runtime and numpy only. Never import torch here."""
