"""Judging a model: metrics, calibration, plots, robustness at levels, attacks, drift reports, cross-dataset."""
