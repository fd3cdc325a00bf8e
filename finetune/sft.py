"""K2-Chat SFT entry point (the command line of one training process).

    accelerate launch --config_file pretrain/accelerate/zero3.yaml finetune/sft.py \
        --recipe finetune/recipes/k2_chat_060124.yaml
"""

from __future__ import annotations

import argparse
import os
import sys

from k2hf.console import configure_logging
from k2hf.finetune.recipe import load_recipe
from k2hf.finetune.train import train
from k2hf.recipes import parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="K2-Chat SFT on TRL (launch with `accelerate launch`).")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    configure_logging()
    out = train(load_recipe(args.recipe, parse_overrides(args.set)))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved the fine-tuned model to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
