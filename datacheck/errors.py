"""Errors that mean "the user asked for something we cannot do" (exit code 2 in the CLIs)."""
from __future__ import annotations


class UserError(ValueError):
    """A bad argument or input. The message is one line, names what was wrong and what was expected."""
