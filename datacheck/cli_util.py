"""What the three CLIs share: a parser whose errors are one line, and a runner that turns
`UserError` into a one-line message and exit code 2 (no traceback)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .errors import UserError


class _ArgError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of printing the whole usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(message)


def run(prog: str, build: Callable[[], Parser], argv: Sequence[str] | None) -> int:
    """Parse ``argv`` with the parser from ``build`` and call the chosen subcommand.

    Each subparser sets ``func`` (``args -> int``) with ``set_defaults``.
    """
    parser = build()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _ArgError as e:
        print(f"{prog}: error: {e} (see '{prog} --help')", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format=f"{prog}: %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # the guards should have said so earlier; never a traceback all the same
        print(f"{prog}: error: out of memory ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
              f"use a smaller --size, or a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
