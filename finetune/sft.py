"""K2-Chat SFT entry point.

    accelerate launch --config_file pretrain/accelerate/zero3.yaml finetune/sft.py \
        --recipe finetune/recipes/k2_chat.yaml
"""

import sys

from k2hf.finetune.train import main

if __name__ == "__main__":
    sys.exit(main())
