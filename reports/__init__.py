"""reports: metrics of generated data, data-ablation studies and their HTML report; see README.md."""
from __future__ import annotations

from . import metrics
from .evaluate import Evaluator, evaluate

__all__ = ["Evaluator", "evaluate", "metrics"]
