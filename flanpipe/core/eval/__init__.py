"""Evaluation's kernels: rank-classification scoring and generation, metrics and bootstrap intervals."""
