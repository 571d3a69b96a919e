"""``generative`` command line: train and sample GANs and VAEs."""
from __future__ import annotations

import sys
from typing import Sequence

from datacheck.cli_util import Parser, run


def build_parser() -> Parser:
    p = Parser(prog="generative", description="Train GANs and VAEs on any dataset, with exact resume.")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("generative", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
