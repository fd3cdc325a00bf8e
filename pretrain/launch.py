"""Pretraining entry points: pick the trainer a recipe asks for and run it (``k2hf pretrain``, ``pretrain/train.py``).

Kept apart from :mod:`.trainer` so that the trainer never imports what builds on it (the spike-aware trainer).
"""

from __future__ import annotations

from .checkpointing import TrainerState
from .config import TrainConfig
from .spikes import SpikeAwarePretrainer
from .trainer import Pretrainer


def run(config: TrainConfig) -> TrainerState:
    """Build the trainer (with spike handling when enabled) and train."""
    if config.spikes.enabled:
        return SpikeAwarePretrainer(config).train()
    return Pretrainer(config).train()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from k2hf.recipes import parse_overrides

    from .config import load_train_config

    parser = argparse.ArgumentParser(description="K2 pretraining (launch with `accelerate launch`).")
    parser.add_argument("--config", required=True, help="pretraining recipe YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override recipe values, e.g. optim.lr=3e-4 max_steps=100")
    args = parser.parse_args(argv)
    state = run(load_train_config(args.config, parse_overrides(args.set)))
    print(f"finished at step {state.global_step}")
    return 0


__all__ = ["main", "run"]
