"""K2 pretraining, the script every process of a launch runs (the library entry point is
:func:`k2hf.pretrain.launch.run`; ``k2hf pretrain`` runs the same job in one process).

    accelerate launch --config_file pretrain/accelerate/zero2.yaml pretrain/train.py \
        --config pretrain/configs/k2_65b_stage1.yaml

Relaunching the same command resumes from the newest complete checkpoint.
"""

import sys

from k2hf.pretrain.launch import PRETRAINING

if __name__ == "__main__":
    sys.exit(PRETRAINING.script_main())
