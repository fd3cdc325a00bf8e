"""``k2hf pretrain``, ``k2hf sft pack | train``, ``k2hf spikes analyze``: training, in this process (several
processes: ``accelerate launch`` on the scripts ``pretrain/train.py`` and ``finetune/sft.py``, the same jobs)."""

from __future__ import annotations

import argparse

from k2hf.console import add_overrides
from k2hf.finetune.launch import SFT
from k2hf.pretrain.config import SpikeSection
from k2hf.pretrain.launch import PRETRAINING
from k2hf.recipes import add_section_flags, section_flags

DETECTOR_SETTINGS = ["window", "threshold", "min_delta", "recovery_steps", "malignant_steps"]


def register(sub: argparse._SubParsersAction) -> None:
    pretrain = sub.add_parser("pretrain", help="run pretraining in this process (multi-GPU: accelerate launch "
                              "pretrain/train.py)")
    PRETRAINING.add_arguments(pretrain)
    pretrain.set_defaults(func=lambda args: PRETRAINING.start(args.recipe, args.set))

    sft = sub.add_parser("sft", help="K2-Chat SFT: pack the data, train").add_subparsers(dest="sft_command",
                                                                                        required=True)
    pack = sft.add_parser("pack", help="all the data work of a recipe: packed Arrow dataset + report")
    pack.add_argument("--recipe", required=True, help="SFT recipe YAML (`k2hf recipes list`)")
    pack.add_argument("--out", default=None, help="default: the recipe's packed_dir")
    add_overrides(pack)
    pack.set_defaults(func=_sft_pack)
    train = sft.add_parser("train", help="fine-tune in this process (multi-GPU: accelerate launch finetune/sft.py)")
    SFT.add_arguments(train)
    train.set_defaults(func=lambda args: SFT.start(args.recipe, args.set))

    spikes = sub.add_parser("spikes", help="loss-spike analysis").add_subparsers(dest="spikes_command", required=True)
    analyze = spikes.add_parser("analyze", help="table + PNG of benign/malignant spikes of a run or a CSV/JSONL curve")
    analyze.add_argument("source", help="a pretraining run dir, or a CSV/JSONL with step, loss, grad_norm")
    analyze.add_argument("--out", help="PNG path (default: spikes_analysis.png beside the source)")
    add_section_flags(analyze, SpikeSection, DETECTOR_SETTINGS,
                      default_note="default: the run's own setting, recorded at its start, else {default}")
    analyze.set_defaults(func=_spikes_analyze)


def _sft_pack(args: argparse.Namespace) -> int:
    from k2hf.finetune.packing import pack, report_text
    from k2hf.finetune.recipe import load_recipe
    from k2hf.recipes import parse_overrides

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    print(report_text(pack(recipe, args.out), args.out or recipe.packed_path))
    return 0


def _spikes_analyze(args: argparse.Namespace) -> int:
    from k2hf.pretrain.spikes import analysis_settings, analyze, format_table

    config = analysis_settings(args.source, **section_flags(args, SpikeSection, DETECTOR_SETTINGS))
    spikes, png = analyze(args.source, config, args.out)
    print(format_table(spikes))
    if png:
        print(f"plot: {png}")
    return 0
