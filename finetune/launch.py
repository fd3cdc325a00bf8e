"""SFT's one library entry point, :func:`run`, and the job the CLI (``k2hf sft train``) and the script
``accelerate launch`` starts (``finetune/sft.py``) share."""

from __future__ import annotations

from pathlib import Path

from k2hf.console import TrainingJob

from .recipe import SFTRecipe, load_recipe


def run(recipe: SFTRecipe) -> Path:
    """Pack the recipe's data (or reuse it), fine-tune on TRL, save; returns the final model's folder."""
    from .trainer import train  # here: the CLI reads the job's flags without loading TRL

    return train(recipe)


SFT = TrainingJob(
    title="K2-Chat SFT on TRL", recipe_flag="--recipe", recipe_help="SFT recipe YAML (`k2hf recipes list`)",
    load=load_recipe, run=run, done=lambda out: f"saved the fine-tuned model to {out}")

__all__ = ["SFT", "run"]
