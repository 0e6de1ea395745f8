"""Evaluation of a checkpoint on a split: metrics, reports and pictures; imports utils, data, models and inference."""
