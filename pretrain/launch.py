"""Pretraining entry points (``k2hf pretrain``, ``pretrain/train.py``)."""

from __future__ import annotations

from .config import TrainConfig
from .trainer import Pretrainer, Progress


def run(config: TrainConfig) -> Progress:
    """Build the trainer (with spike handling when the recipe enables it) and train."""
    return Pretrainer(config).train()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from k2hf.console import configure_logging
    from k2hf.recipes import parse_overrides

    from .config import load_train_config

    parser = argparse.ArgumentParser(description="K2 pretraining (launch with `accelerate launch`).")
    parser.add_argument("--config", required=True, help="pretraining recipe YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override recipe values, e.g. optim.lr=3e-4 max_steps=100")
    args = parser.parse_args(argv)
    configure_logging()
    state = run(load_train_config(args.config, parse_overrides(args.set)))
    print(f"finished at step {state.global_step}")
    return 0


__all__ = ["main", "run"]
