"""Stages that make a model smaller or cheaper: training, pruning, distillation, quantization."""
