"""K2 pretraining entry point (the command line of one training process).

    accelerate launch --config_file pretrain/accelerate/zero2.yaml pretrain/train.py \
        --config pretrain/configs/k2_65b_stage1.yaml

Relaunching the same command resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

from k2hf.console import configure_logging
from k2hf.pretrain.config import load_train_config
from k2hf.pretrain.launch import run
from k2hf.recipes import parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="K2 pretraining (launch with `accelerate launch`).")
    parser.add_argument("--config", required=True, help="pretraining recipe YAML")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override recipe values, e.g. optim.lr=3e-4 max_steps=100")
    args = parser.parse_args(argv)
    configure_logging()
    progress = run(load_train_config(args.config, parse_overrides(args.set)))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"finished at step {progress.global_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
