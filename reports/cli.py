"""``reports`` command line: evaluate, ablate, render, value."""
from __future__ import annotations

import sys
from typing import Sequence

from datacheck.cli_util import Parser, run


def build_parser() -> Parser:
    p = Parser(prog="reports", description="Measure generated data and run data-ablation studies.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from .study_cli import add_study_commands  # ablate, render

    add_study_commands(sub)
    from .evaluation import add_evaluate_command

    add_evaluate_command(sub)
    from .value_run import add_value_command

    add_value_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("reports", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
