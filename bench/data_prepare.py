"""Benchmark `k2hf data prepare` against the naive way on a ~100 MB synthetic JSONL corpus (CPU).

Naive way = what most pretraining scripts do: `datasets.load_dataset("json")` + `.map(tokenizer, batched=True,
num_proc=N)`, then concatenate ids + eos in Python and cut rows of `seq_len`. Both use the same K2 tokenizer
(the real LLaMA base when ../shared/llama-tokenizer is present, else the tiny one) and the same cores.

    python bench/data_prepare.py --mb 100 --workers 2

Also times each tokenization engine alone on in-memory texts (the ceiling for a pipeline built on it).
Prints one JSON line per method (seconds, tokens/s, docs/s, peak RSS of the process tree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO.parent / "shared" / "llama-tokenizer" / "tokenizer.model"


def make_corpus(root: Path, megabytes: int, files: int, seed: int = 0) -> list[str]:
    """Deterministic English-like documents (`bench/synthetic_text.py`), 80-500 words each."""
    from synthetic_text import SyntheticText

    generator = SyntheticText(seed)
    rng = generator.rng
    root.mkdir(parents=True, exist_ok=True)
    paths, target = [], megabytes * 1_000_000 // files
    for f in range(files):
        path = root / f"part-{f:03d}.jsonl"
        written = 0
        with open(path, "w") as out:
            while written < target:
                line = json.dumps({"text": generator.text(int(rng.integers(80, 500))), "id": written}) + "\n"
                out.write(line)
                written += len(line)
        paths.append(str(path))
    return paths


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run_k2hf(files: list[str], tokenizer_dir: Path, out: Path, workers: int, seq_len: int) -> dict:
    from k2hf.pretrain.data.config import DataConfig
    from k2hf.pretrain.data.prepare import prepare

    config = DataConfig.from_dict({
        "tokenizer": str(tokenizer_dir), "seq_len": seq_len, "num_chunks": 16, "num_workers": workers,
        "subsets": [{"name": "web", "paths": files}],
    })
    start = time.perf_counter()
    manifest = prepare(config, out, progress=False)
    seconds = time.perf_counter() - start
    subset = manifest.subsets[0]
    return {"method": "k2hf data prepare", "seconds": seconds, "docs": subset.documents_read,
            "tokens": subset.tokens + subset.tail_tokens_dropped, "rows": manifest.total_rows}


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


def run_engine(files: list[str], tokenizer_dir: Path, engine: str, workers: int) -> dict:
    """An engine alone on texts already in memory, all cores (no I/O, no JSON, no packing): `tokenizers` (what the
    naive way runs) or SentencePiece (what k2hf runs when the tokenizer has its tokenizer.model)."""
    from transformers import AutoTokenizer

    from k2hf.tokenizer import sentencepiece_model_of

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with contextlib.ExitStack() as stack:
        texts = [json.loads(line)["text"] for f in files for line in stack.enter_context(open(f))]
    start = time.perf_counter()
    tokens = 0
    if engine == "sentencepiece":
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(sentencepiece_model_of(tokenizer)))
        for i in range(0, len(texts), 1024):
            tokens += sum(len(ids) + 1 for ids in processor.encode(texts[i : i + 1024], num_threads=workers))
    else:
        encode = tokenizer.backend_tokenizer.encode_batch_fast
        for i in range(0, len(texts), 1024):
            tokens += sum(len(e.ids) + 1 for e in encode(texts[i : i + 1024], add_special_tokens=False))
    return {"method": f"{engine} alone (in-memory texts, all cores)", "seconds": time.perf_counter() - start,
            "docs": len(texts), "tokens": tokens, "rows": 0}


METHODS = ("k2hf", "naive", "tokenizers", "sentencepiece")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--method", choices=["all", *METHODS], default="all")
    parser.add_argument("--work", help=argparse.SUPPRESS)  # corpus + tokenizer made by the parent run
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.work is None:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            from k2hf import build_k2_tokenizer
            from k2hf.tiny import build_tiny_tokenizer
            from k2hf.tokenizer import save_tokenizer

            tokenizer = build_k2_tokenizer(LLAMA) if LLAMA.is_file() else build_tiny_tokenizer(tmp / "sp")
            save_tokenizer(tokenizer, tmp / "tokenizer")
            make_corpus(tmp / "corpus", args.mb, args.files)
            # each method in its own process, so peak RSS and caches do not leak between them (or from the generator)
            for method in METHODS if args.method == "all" else [args.method]:
                code = os.system(f"{sys.executable} {__file__} --workers {args.workers} --seq-len {args.seq_len} "
                                 f"--method {method} --work {tmp}")
                if code:
                    sys.exit(code)
        return
    work = Path(args.work)
    files = sorted(str(p) for p in (work / "corpus").glob("*.jsonl"))
    if args.method == "k2hf":
        result = run_k2hf(files, work / "tokenizer", work / "out", args.workers, args.seq_len)
    elif args.method == "naive":
        result = run_naive(files, work / "tokenizer", work / "cache", args.workers, args.seq_len)
    else:
        result = run_engine(files, work / "tokenizer", args.method, args.workers)
    result.update(
        tokens_per_s=round(result["tokens"] / result["seconds"]),
        docs_per_s=round(result["docs"] / result["seconds"]),
        corpus_mb=round(sum(os.path.getsize(f) for f in files) / 1e6, 1), workers=args.workers,
        peak_rss_mb=round(peak_rss_mb()), seconds=round(result["seconds"], 2),
        tokenizer="K2 (LLaMA base)" if LLAMA.is_file() else "K2 (tiny base)",
    )
    print(json.dumps(result), flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
