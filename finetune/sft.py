"""K2-Chat SFT, the script every process of a launch runs (the library entry point is
:func:`k2hf.finetune.launch.run`; ``k2hf sft train`` runs the same job in one process).

    accelerate launch --config_file pretrain/accelerate/zero3.yaml finetune/sft.py \
        --recipe finetune/recipes/k2_chat_060124.yaml
"""

import sys

from k2hf.finetune.launch import SFT

if __name__ == "__main__":
    sys.exit(SFT.script_main())
