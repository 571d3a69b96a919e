"""datacheck: load image datasets robustly, profile them and find what is wrong with them."""
from __future__ import annotations

from .dataset import Dataset, concat
from .errors import UserError
from .sources import load

# ``datacheck.audit`` / ``.split`` / ``.dedupe`` are the functions, while the modules of the same
# names stay importable (``from datacheck.dedupe import find_duplicate_groups``). audit and split
# import pandas lazily; dedupe (pandas + the checks) is imported on first call, so
# ``import datacheck`` stays fast.
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402
from typing import Any as _Any  # noqa: E402

from .audit import audit  # noqa: E402
from .split import split  # noqa: E402


def dedupe(source_or_dataset: _Any, **kwargs: _Any) -> _Any:
    """One row per item (``id``, ``path``, ``cluster``, ``keep``, ``reason``): which copy of each
    group of exact or near duplicates to keep. See :func:`datacheck.dedupe.dedupe`."""
    from .dedupe import dedupe as _dedupe

    return _dedupe(source_or_dataset, **kwargs)


def find_copies(fake: _Any, train: _Any, heldout: _Any = None, **kwargs: _Any) -> _Any:
    """One row per item of ``fake`` that copies a training item (``fake_id``, ``train_id``,
    ``similarity``, ``kind``, ``group``); ``.attrs["summary"]`` holds the rates and, with ``heldout``,
    the false-alarm baseline and p-value. See :func:`datacheck.copies.find_copies`."""
    from .copies import find_copies as _find

    return _find(fake, train, heldout, **kwargs)


_FUNCTIONS = frozenset({"audit", "dedupe", "split"})


class _Package(_types.ModuleType):
    """The import system binds ``datacheck.<name>`` to a submodule when it first loads it; for the
    three API functions that share a module's name, keep the function."""

    def __setattr__(self, name: str, value: _Any) -> None:
        if name in _FUNCTIONS and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

__all__ = ["Dataset", "UserError", "audit", "concat", "dedupe", "find_copies", "load", "split"]
