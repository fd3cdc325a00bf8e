"""Pretraining's one library entry point, :func:`run`, and the job the CLI (``k2hf pretrain``) and the script
``accelerate launch`` starts (``pretrain/train.py``) share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from k2hf.console import TrainingJob

from .config import TrainConfig, load_train_config

if TYPE_CHECKING:
    from .trainer import Progress


def run(config: TrainConfig) -> Progress:
    """Build the trainer (with spike handling when the recipe enables it) and train (or resume) to the end."""
    from .trainer import Pretrainer  # here: the CLI reads the job's flags without loading the trainer

    return Pretrainer(config).train()


PRETRAINING = TrainingJob(
    title="K2 pretraining", recipe_flag="--config", recipe_help="pretraining recipe YAML (`k2hf recipes list`)",
    load=load_train_config, run=run, done=lambda progress: f"finished at step {progress.global_step}")

__all__ = ["PRETRAINING", "run"]
