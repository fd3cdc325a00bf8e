"""Benchmark `k2hf data prepare` against the naive way on a ~100 MB synthetic JSONL corpus (CPU).

Naive way = what most pretraining scripts do: `datasets.load_dataset("json")` + `.map(tokenizer, batched=True,
num_proc=N)`, then concatenate ids + eos in Python and cut rows of `seq_len`. Both use the same K2 tokenizer
(the real LLaMA base when ../shared/llama-tokenizer is present, else the tiny one) and the same cores.

    python bench/data_prepare.py --mb 100 --workers 2

Also times the tokenizer alone on in-memory texts (the ceiling for any pipeline on these cores).
Prints one JSON line per method (seconds, tokens/s, docs/s, peak RSS of the process tree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO.parent / "shared" / "llama-tokenizer" / "tokenizer.model"


def make_corpus(root: Path, megabytes: int, files: int, seed: int = 0) -> list[str]:
    """Deterministic English-like documents (words from the bundled samples), ~500-3000 characters each."""
    from k2hf.sample_data import sample_texts

    words = np.array(sorted({w for t in sample_texts() for w in t.split()}))
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths, target = [], megabytes * 1_000_000 // files
    for f in range(files):
        path = root / f"part-{f:03d}.jsonl"
        written = 0
        with open(path, "w") as out:
            while written < target:
                n = int(rng.integers(80, 500))
                text = " ".join(words[rng.integers(0, len(words), n)])
                line = json.dumps({"text": text, "id": written}) + "\n"
                out.write(line)
                written += len(line)
        paths.append(str(path))
    return paths


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run_k2hf(files: list[str], tokenizer_dir: Path, out: Path, workers: int, seq_len: int) -> dict:
    from k2hf.pretrain.data.config import data_config_from_dict
    from k2hf.pretrain.data.prepare import prepare

    config = data_config_from_dict({
        "tokenizer": str(tokenizer_dir), "seq_len": seq_len, "num_chunks": 16, "num_workers": workers,
        "subsets": [{"name": "web", "paths": files}],
    })
    start = time.perf_counter()
    manifest = prepare(config, out, progress=False)
    seconds = time.perf_counter() - start
    subset = manifest["subsets"][0]
    return {"method": "k2hf data prepare", "seconds": seconds, "docs": subset["documents_read"],
            "tokens": subset["tokens"] + subset["tail_tokens_dropped"], "rows": manifest["total_rows"]}


def run_naive(files: list[str], tokenizer_dir: Path, cache: Path, workers: int, seq_len: int) -> dict:
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    start = time.perf_counter()
    ds = load_dataset("json", data_files=files, split="train", cache_dir=str(cache))
    ds = ds.map(lambda b: tokenizer(b["text"], add_special_tokens=False, split_special_tokens=True), batched=True,
                num_proc=workers, remove_columns=ds.column_names)
    ids: list[int] = []
    for example in ds:
        ids.extend(example["input_ids"])
        ids.append(eos)
    rows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    seconds = time.perf_counter() - start
    return {"method": "naive datasets.map + Python concat", "seconds": seconds, "docs": len(ds), "tokens": len(ids),
            "rows": len(rows)}


def run_ceiling(files: list[str], tokenizer_dir: Path) -> dict:
    """The floor of any pipeline: tokenizer alone on texts already in memory, all cores (no I/O, no JSON)."""
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(tokenizer_dir).backend_tokenizer
    texts = [json.loads(line)["text"] for f in files for line in open(f)]
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1024):
        tokens += sum(len(e.ids) + 1 for e in backend.encode_batch_fast(texts[i : i + 1024], add_special_tokens=False))
    return {"method": "tokenizer only (in-memory texts, encode_batch_fast, all cores)",
            "seconds": time.perf_counter() - start, "docs": len(texts), "tokens": tokens, "rows": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--method", choices=["all", "k2hf", "naive", "ceiling"], default="all")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from k2hf import build_k2_tokenizer
        from k2hf.tiny import build_tiny_tokenizer

        tokenizer = build_k2_tokenizer(LLAMA) if LLAMA.is_file() else build_tiny_tokenizer(tmp / "sp")
        tokenizer.save_pretrained(tmp / "tokenizer")
        files = make_corpus(tmp / "corpus", args.mb, args.files)
        size = sum(os.path.getsize(f) for f in files)
        methods = ["k2hf", "naive", "ceiling"] if args.method == "all" else [args.method]
        for method in methods:
            # each method in its own process, so peak RSS and caches do not leak between them
            if len(methods) > 1:
                code = os.system(f"{sys.executable} {__file__} --mb {args.mb} --files {args.files} "
                                 f"--workers {args.workers} --seq-len {args.seq_len} --method {method}")
                if code:
                    sys.exit(code)
                continue
            if method == "k2hf":
                result = run_k2hf(files, tmp / "tokenizer", tmp / "out", args.workers, args.seq_len)
            elif method == "ceiling":
                result = run_ceiling(files, tmp / "tokenizer")
            else:
                result = run_naive(files, tmp / "tokenizer", tmp / "cache", args.workers, args.seq_len)
            result.update(
                tokens_per_s=round(result["tokens"] / result["seconds"]),
                docs_per_s=round(result["docs"] / result["seconds"]),
                corpus_mb=round(size / 1e6, 1), workers=args.workers, peak_rss_mb=round(peak_rss_mb()),
                tokenizer="K2 (LLaMA base)" if LLAMA.is_file() else "K2 (tiny base)", seconds=round(result["seconds"], 2),
            )
            print(json.dumps(result), flush=True)
            shutil.rmtree(tmp / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
