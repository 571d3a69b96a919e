"""datacheck: load image datasets robustly, profile them and find what is wrong with them."""
from __future__ import annotations

from typing import Any as _Any

# The API functions live in modules named differently (auditing, splitting, deduplication, copies), so
# ``datacheck.audit`` is always the function and ``import datacheck.auditing`` the module: nothing is
# shadowed. dedupe and find_copies import pandas and the checks on first call, so ``import datacheck``
# stays fast.
from .auditing import audit
from .dataset import Dataset, concat
from .errors import UserError
from .sources import load
from .splitting import split


def dedupe(source_or_dataset: _Any, **kwargs: _Any) -> _Any:
    """One row per item (``id``, ``path``, ``cluster``, ``keep``, ``reason``): which copy of each
    group of exact or near duplicates to keep. See `datacheck.deduplication.dedupe`."""
    from .deduplication import dedupe as _dedupe

    return _dedupe(source_or_dataset, **kwargs)


def find_copies(fake: _Any, train: _Any, heldout: _Any = None, **kwargs: _Any) -> _Any:
    """One row per item of ``fake`` that copies a training item (``fake_id``, ``train_id``,
    ``similarity``, ``kind``, ``group``); ``.attrs["summary"]`` holds the rates and, with ``heldout``,
    the false-alarm baseline and p-value. See `datacheck.copies.find_copies`."""
    from .copies import find_copies as _find

    return _find(fake, train, heldout, **kwargs)


__all__ = ["Dataset", "UserError", "audit", "concat", "dedupe", "find_copies", "load", "split"]
