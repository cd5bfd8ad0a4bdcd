"""Evaluation-centric fine-tuning experiment harness."""

__version__ = "0.1.0"
