"""Pruning algorithms the prune stage calls: coupled channels, sensitivity, the latency-guided search."""
