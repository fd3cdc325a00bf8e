"""``k2hf`` command line: a short dispatcher. Each command group lives in :mod:`k2hf.commands` with its flags
beside its handlers; this module collects them, and turns a user's mistake into one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from .commands import data, demo, model, recipes, research, training

GROUPS = (model, data, training, research, recipes, demo)  # the order `k2hf --help` lists them in


class _OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (usage stays behind --help), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="k2hf", description="LLM360 K2 on the Hugging Face stack.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the full traceback of user errors too")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0), or a bad argument, said in one line (2)
        return exit_.code
    from .console import configure_logging
    from .errors import UserError, hub_access_problem

    configure_logging()

    debug = args.debug or os.environ.get("K2HF_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("k2hf: interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except UserError as error:  # something the user can fix: one line, exit 2 (K2HF_DEBUG=1 for the traceback)
        if debug:
            raise
        code = getattr(error, "exit_code", 2)  # a stop on purpose (preemption) says so with its own code
        print(f"k2hf: {'error: ' if code == 2 else ''}{error}", file=sys.stderr)
        return code
    except Exception as error:  # a Hub repo that cannot be reached or found is a user matter too
        problem = hub_access_problem(error)
        if problem is None or debug:
            raise
        print(f"k2hf: error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
