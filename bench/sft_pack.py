"""Benchmark `k2hf sft pack` against TRL's own dataset preparation on 20K synthetic conversations (CPU).

TRL's way = `SFTTrainer(...)` construction with `packing=True` (bfd), `max_length=8192`,
`assistant_only_loss=True`, `dataset_num_proc=N`: it renders the chat template, tokenizes, builds the assistant
masks and packs. Same K2 tokenizer and template (real LLaMA base when ../shared/llama-tokenizer is present),
same JSONL file, same cores. Conversations: 1-3 turns, 10-120-word user and 20-400-word assistant messages of
synthetic text with a realistic word-frequency profile (`bench/synthetic_text.py`).

    python bench/sft_pack.py --conversations 20000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO.parent / "shared" / "llama-tokenizer" / "tokenizer.model"


def make_conversations(path: Path, n: int, seed: int = 0) -> None:
    from synthetic_text import SyntheticText

    generator = SyntheticText(seed)
    rng = generator.rng
    with open(path, "w") as f:
        for _ in range(n):
            messages = []
            for _ in range(int(rng.integers(1, 4))):
                messages += [{"role": "user", "content": generator.text(int(rng.integers(10, 121)))},
                             {"role": "assistant", "content": generator.text(int(rng.integers(20, 401)))}]
            f.write(json.dumps({"messages": messages}) + "\n")


def run_k2hf(data: Path, base: Path, out: Path, workers: int, n: int) -> dict:
    from k2hf.finetune.packing import pack
    from k2hf.finetune.recipe import SFTRecipe

    num_proc = int(os.environ.get("K2HF_BENCH_NUM_PROC", workers))
    recipe = SFTRecipe.from_dict({"model": str(base), "output_dir": str(out), "max_length": 8192, "num_proc": num_proc,
                               "sources": [{"name": "synthetic", "kind": "messages", "paths": [str(data)]}]})
    start = time.perf_counter()
    report = pack(recipe, out / "packed", progress=False)
    seconds = time.perf_counter() - start
    return {"method": "k2hf sft pack", "seconds": seconds, "conversations": n, "tokens": report["tokens"],
            "rows": report["rows"], "fill_ratio": report["fill_ratio"]}


def run_trl(data: Path, base: Path, out: Path, workers: int, n: int) -> dict:
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from k2hf import K2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = K2ForCausalLM.from_pretrained(base)
    start = time.perf_counter()
    dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(out / "cache"))
    args = SFTConfig(output_dir=str(out / "trl"), packing=True, max_length=8192, assistant_only_loss=True,
                     dataset_num_proc=workers, bf16=False, use_cpu=True, report_to=[])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds = time.perf_counter() - start
    packed = trainer.train_dataset
    tokens = int(sum(sum(s) for s in packed["seq_lengths"]))
    return {"method": "TRL SFTTrainer prep (packing=True, bfd)", "seconds": seconds, "conversations": n,
            "tokens": tokens, "rows": len(packed), "fill_ratio": tokens / (len(packed) * 8192)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--method", choices=["both", "k2hf", "trl"], default="both")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.method == "both":
        for method in ("k2hf", "trl"):
            code = os.system(f"{sys.executable} {__file__} --conversations {args.conversations} "
                             f"--workers {args.workers} --method {method}")
            if code:
                sys.exit(code)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from k2hf import K2Config, K2ForCausalLM, build_k2_tokenizer
        from k2hf.tiny import build_tiny_tokenizer
        from k2hf.tokenizer import save_tokenizer

        tokenizer = build_k2_tokenizer(LLAMA) if LLAMA.is_file() else build_tiny_tokenizer(tmp / "sp")
        K2ForCausalLM(K2Config.tiny()).save_pretrained(tmp / "base")
        save_tokenizer(tokenizer, tmp / "base")
        make_conversations(tmp / "conversations.jsonl", args.conversations)
        run = run_k2hf if args.method == "k2hf" else run_trl
        result = run(tmp / "conversations.jsonl", tmp / "base", tmp, args.workers, args.conversations)
        result.update(conversations_per_s=round(result["conversations"] / result["seconds"]),
                      tokens_per_s=round(result["tokens"] / result["seconds"]), seconds=round(result["seconds"], 2),
                      fill_ratio=round(result["fill_ratio"], 4), workers=args.workers,
                      tokenizer="K2 (LLaMA base)" if LLAMA.is_file() else "K2 (tiny base)")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
