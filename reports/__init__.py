"""reports: metrics of generated data, data-ablation studies and their HTML report, data valuation (`value`); see docs/reports.md."""
from __future__ import annotations

from . import metrics
from .evaluation import Evaluator, evaluate
from .valuation import ValueConfig
from .value_run import value

__all__ = ["Evaluator", "ValueConfig", "evaluate", "metrics", "value"]
