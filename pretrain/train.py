"""K2 pretraining entry point.

    accelerate launch --config_file pretrain/accelerate/zero2.yaml pretrain/train.py \
        --config pretrain/configs/k2_65b_stage1.yaml

Relaunching the same command resumes from the newest complete checkpoint.
"""

import sys

from k2hf.pretrain.launch import main

if __name__ == "__main__":
    sys.exit(main())
