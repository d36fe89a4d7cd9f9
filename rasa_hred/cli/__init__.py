"""The ``rasa-hred`` command line: the layer on top of all others.

Each command group has a module here that defines its arguments and turns them into the
library's typed settings. Argument definitions import nothing heavy, so ``--help`` is instant;
the work is imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rasa_hred import __version__
from rasa_hred.cli import bench, converse, corpus, generate, serve, train
from rasa_hred.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rasa-hred",
        description=(
            "HRED dialogue models for Rasa: inspect corpora, train and evaluate models, "
            "generate replies, serve them to Rasa, and benchmark it all."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (corpus, train, generate, converse, serve, bench):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"rasa-hred: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rasa-hred: interrupted", file=sys.stderr)
        return 130
