"""Judging a model: metrics, calibration, robustness perturbations and plots."""
