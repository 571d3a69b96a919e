"""Study factors (a registry): data factors, ``dirty``/``cleaned``, ``valued``, the negative control and the model
tweaks. Importing this package registers every built-in factor; `reports.factors.base` says what each
level means and what a registry entry holds."""
from __future__ import annotations

from .base import FACTORS, Factor, FactorFn, apply_factor, conditional, get_factor
from . import data, cleaning, tweaks, valued  # noqa: E402,F401  (registers the built-in factors)
from .cleaning import DEFAULT_CLEAN_CHECKS, audit_and_remove
from .data import CORRUPTIONS, NEAR_KINDS, corrupt_image, long_tail_counts, stratified_take

__all__ = ["CORRUPTIONS", "DEFAULT_CLEAN_CHECKS", "FACTORS", "NEAR_KINDS", "Factor", "FactorFn", "apply_factor",
           "audit_and_remove", "conditional", "corrupt_image", "get_factor", "long_tail_counts", "stratified_take"]
