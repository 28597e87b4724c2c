"""Judging a model: metrics and their scores, the task (what a recipe's model is judged by), evaluation, sizes."""
