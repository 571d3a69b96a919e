"""Dataset checks (a registry). Importing this package registers every built-in check."""
from __future__ import annotations

from .base import CHECKS, Check, CheckContext, CheckResult, register_check, run_checks
from . import quality, duplicates, outliers, labels  # noqa: E402,F401  (registers the built-in checks)

__all__ = ["CHECKS", "Check", "CheckContext", "CheckResult", "register_check", "run_checks"]
