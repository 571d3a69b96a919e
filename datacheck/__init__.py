"""datacheck: load image datasets robustly, profile them and find what is wrong with them."""
from __future__ import annotations

from .dataset import Dataset, concat
from .errors import UserError
from .sources import load

# Bound after the submodule imports on purpose: ``datacheck.audit`` / ``datacheck.split`` are the
# functions (the modules stay importable as ``from datacheck.audit import ...``). Both modules
# import pandas lazily, so ``import datacheck`` stays fast.
from .audit import audit  # noqa: E402
from .split import split  # noqa: E402

__all__ = ["Dataset", "UserError", "audit", "concat", "load", "split"]
