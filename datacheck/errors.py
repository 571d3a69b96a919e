"""Errors that mean "the user asked for something we cannot do" (exit code 2 in the CLIs)."""
from __future__ import annotations

from typing import Iterable


class UserError(ValueError):
    """A bad argument or input. The message is one line, names what was wrong and what was expected."""


def check_keys(given: "Iterable[str]", known: "Iterable[str]", what: str) -> None:
    """A config's unknown keys are an error: one line naming them and the allowed ones (``what``: e.g.
    "study setting")."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"unknown {what}(s): {', '.join(unknown)}; expected some of: {', '.join(known)}")
