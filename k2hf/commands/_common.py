"""What the command modules share: the options a user gave, and the ``--set KEY=VALUE`` flag."""

from __future__ import annotations

import argparse


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options the user gave (flags default to None): everything else takes the library's own default,
    stated once, where it is implemented."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, dotted for sections (optim.lr=3e-4)")
