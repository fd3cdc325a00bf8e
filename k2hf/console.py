"""k2hf as a program: where library logs go (one plain line each on stderr; library code only logs, programs call
:func:`configure_logging` once), and how a training job starts (:class:`TrainingJob`, shared by the CLI and the
training scripts)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def configure_logging(level: int = logging.INFO) -> None:
    """Show k2hf's own log records (INFO and up) as ``[k2hf] message``; leaves other loggers alone."""
    logger = logging.getLogger("k2hf")
    if not any(getattr(h, "_k2hf", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[k2hf] %(message)s"))
        handler._k2hf = True
        logger.addHandler(handler)
    logger.setLevel(level)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE ...``: recipe overrides (:func:`k2hf.recipes.parse_overrides` reads them)."""
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, dotted for sections (e.g. optim.lr=3e-4 max_steps=100)")


@dataclass(frozen=True)
class TrainingJob:
    """One training job as programs start it: ``k2hf pretrain`` / ``k2hf sft train`` in this process, and the
    scripts ``accelerate launch`` starts on every rank (``pretrain/train.py``, ``finetune/sft.py``). Each job's
    library entry point is its package's ``launch.run``."""

    title: str  # "K2 pretraining"
    recipe_flag: str  # "--config" / "--recipe"
    recipe_help: str
    load: Callable[[str, dict[str, Any]], Any]  # (recipe path, overrides) -> recipe
    run: Callable[[Any], Any]  # recipe -> result
    done: Callable[[Any], str]  # result -> the line rank 0 prints at the end

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(self.recipe_flag, required=True, dest="recipe", help=self.recipe_help)
        add_overrides(parser)

    def start(self, recipe: str, overrides: list[str]) -> int:
        """Load the recipe with its overrides, run, and (rank 0) say how it ended."""
        from .recipes import parse_overrides

        result = self.run(self.load(recipe, parse_overrides(overrides)))
        if int(os.environ.get("RANK", "0")) == 0:
            print(self.done(result))
        return 0

    def script_main(self, argv: list[str] | None = None) -> int:
        """The ``main`` of a training script: its own command line, logging, then :meth:`start`. A stop with an
        exit code of its own (preemption: 75, rerun to resume) is one line on rank 0 and that code."""
        parser = argparse.ArgumentParser(description=f"{self.title} (launch with `accelerate launch`).")
        self.add_arguments(parser)
        args = parser.parse_args(argv)
        configure_logging()
        try:
            return self.start(args.recipe, args.set)
        except Exception as error:
            code = getattr(error, "exit_code", None)
            if code is None:
                raise
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"{os.path.basename(sys.argv[0])}: {error}", file=sys.stderr)
            return code
