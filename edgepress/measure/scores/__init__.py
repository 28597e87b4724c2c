"""Scoring functions of the metric table (edgepress/measure/metrics.py): numpy in, plain floats out."""
