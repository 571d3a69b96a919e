"""``datacheck`` command line: profile, audit, dedupe, split."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .cli_util import Parser, run


def _cmd_profile(args: argparse.Namespace) -> int:
    from .profile import format_profile, profile
    from .sources import load_from_args
    from .io import write_json

    ds = load_from_args(args)
    prof = profile(ds)
    print(format_profile(prof))
    if args.json:
        write_json(args.json, prof)
    return 0


def build_parser() -> Parser:
    p = Parser(prog="datacheck", description="Load, profile and audit image datasets.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("profile", help="summarize a dataset (images, classes, sizes, problems)")
    sp.add_argument("source", help="'digits', a folder, a .csv manifest, a .npz, IDX or CIFAR-10 files")
    sp.add_argument("--json", metavar="FILE", help="also write the profile as JSON")
    from .sources import add_load_arguments

    add_load_arguments(sp)
    sp.set_defaults(func=_cmd_profile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("datacheck", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
