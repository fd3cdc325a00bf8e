"""Pretraining entry points (``k2hf pretrain``, ``pretrain/train.py``)."""

from __future__ import annotations

from .config import TrainConfig
from .trainer import Pretrainer, Progress


def run(config: TrainConfig) -> Progress:
    """Build the trainer (with spike handling when the recipe enables it) and train."""
    return Pretrainer(config).train()


__all__ = ["run"]
