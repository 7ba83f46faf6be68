"""Evaluation-only code: what measures the models and is never used to train them or to choose their thresholds.

Nothing under ``gateway.training`` except ``evaluate`` may import this package (a test checks it).
"""
