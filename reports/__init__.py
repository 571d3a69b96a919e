"""reports: metrics of generated data, data-ablation studies and their HTML report; see docs/reports.md."""
from __future__ import annotations

from . import metrics
from .evaluation import Evaluator, evaluate

__all__ = ["Evaluator", "evaluate", "metrics"]
