"""datacheck: load image datasets robustly, profile them and find what is wrong with them."""
from __future__ import annotations

from .dataset import Dataset, concat
from .errors import UserError
from .sources import load

__all__ = ["Dataset", "UserError", "concat", "load"]
