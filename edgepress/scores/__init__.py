"""Scoring functions of the metric table (edgepress/metrics.py): numpy in, plain floats out."""
