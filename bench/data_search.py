"""Benchmark `k2hf data index` / `data search` / `trace` against infini-gram's own indexing and a numpy scan (CPU).

The corpus: synthetic JSONL (`bench/synthetic_text.py`), prepared by `k2hf data prepare` with the K2 tokenizer
(the real LLaMA SentencePiece base from ../shared/llama-tokenizer), seq_len 2048. Then, each in its own process:

* `k2hf data index`: infini-gram files written from the prepared chunks' ids + infini-gram's indexer binary;
* infini-gram's own `indexing.py` on the same JSONL documents (it tokenizes them, with the LLaMA tokenizer:
  K2's base; it loads `meta-llama/Llama-2-7b-hf`, served here from a local folder of that name);
* queries on the k2hf index: count (half of the n-grams right after opening it, reading pages from disk as
  needed; half with its files in the page cache, as a serving index is), search (10 occurrences located, with
  provenance and first checkpoint) and trace of 200-token texts, against a numpy scan of the memory-mapped chunk
  files (in the page cache; the same counts, exactly).

    python bench/data_search.py --mb 1000 --workers 2

Prints one JSON line per method (seconds, tokens/s, bytes per token on disk, peak RSS of the process tree) and one
for the queries (median latencies and the scan / index ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_prepare import LLAMA, make_corpus, peak_rss_mb  # noqa: E402

METHODS = ("k2hf-index", "infini-gram-indexing", "queries")


def prepare_data(work: Path, workers: int, seq_len: int) -> dict:
    from k2hf.pretrain.data.config import DataConfig
    from k2hf.pretrain.data.prepare import prepare

    files = sorted(str(p) for p in (work / "corpus").glob("*.jsonl"))
    config = DataConfig.from_dict({"tokenizer": str(work / "tokenizer"), "seq_len": seq_len, "num_chunks": 16,
                                   "num_workers": workers, "subsets": [{"name": "web", "paths": files}]})
    start = time.perf_counter()
    manifest = prepare(config, work / "data", progress=False)
    return {"method": "k2hf data prepare (tokenize once, for training)", "seconds": time.perf_counter() - start,
            "tokens": manifest.total_rows * seq_len, "rows": manifest.total_rows}


def run_k2hf_index(work: Path, workers: int) -> dict:
    from k2hf.analysis.data_index import build_index, index_size

    start = time.perf_counter()
    build_index(work / "data", work / "index", shards=1, cpus_per_task=workers, mem_gb=8, progress=False)
    seconds = time.perf_counter() - start
    size = index_size(work / "index")
    return {"method": "k2hf data index (from the chunks' ids)", "seconds": seconds, "tokens": size["tokens"],
            "bytes_per_token": size["bytes"] / size["tokens"]}


def run_infini_gram_indexing(work: Path, workers: int) -> dict:
    """infini-gram's own text path: tokenize every document (LLaMA tokenizer), then the same suffix-array build."""
    tokenizer_home = work / "hub-names"
    local = tokenizer_home / "meta-llama" / "Llama-2-7b-hf"
    local.mkdir(parents=True, exist_ok=True)
    shutil.copy(LLAMA, local / "tokenizer.model")
    out = work / "ig-index"
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    command = [sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(work / "corpus"), "--save_dir",
               str(out), "--tokenizer", "llama", "--cpus", str(workers), "--mem", "8", "--shards", "1",
               "--add_metadata", "--ulimit", str(min(hard_limit, 1 << 20))]
    start = time.perf_counter()
    subprocess.run(command, cwd=tokenizer_home, check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - start
    documents = os.path.getsize(out / "offset.0") // 8
    tokens = os.path.getsize(out / "tokenized.0") // 2 - documents
    disk = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"method": "infini-gram indexing.py (tokenizes the text)", "seconds": seconds, "tokens": tokens,
            "bytes_per_token": disk / tokens}


def scan_count(chunks: list[np.ndarray], ids: list[int]) -> int:
    """The count by a numpy scan of the memory-mapped rows (inside rows only, as the index counts)."""
    total = 0
    for rows in chunks:
        flat, length = rows.reshape(-1), rows.shape[1]
        hits = np.flatnonzero(flat == ids[0])
        hits = hits[hits % length + len(ids) <= length]
        for j, token in enumerate(ids[1:], 1):
            hits = hits[flat[hits + j] == token]
        total += len(hits)
    return total


def run_queries(work: Path, queries: int, seed: int = 0) -> dict:
    from k2hf.analysis.search import DataSearch
    from k2hf.analysis.trace import trace_ids
    from k2hf.pretrain.data.reader import PreparedData

    data = PreparedData(work / "data")
    search = DataSearch(work / "index")
    chunks = [data.chunk(c).tokens for c in range(data.num_chunks) if data.rows(c)]
    rng = np.random.default_rng(seed)
    ngrams = []
    for _ in range(queries):
        rows = chunks[rng.integers(len(chunks))]
        n = int(rng.integers(2, 11))
        r, o = int(rng.integers(len(rows))), int(rng.integers(rows.shape[1] - n))
        ngrams.append([int(t) for t in rows[r, o:o + n]])

    def timed(fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        return time.perf_counter() - start, value

    half = len(ngrams) // 2
    search.count(ngrams[0])  # the engine opens its files on first use
    cold_s, cold_counts = zip(*(timed(search.count, q) for q in ngrams[:half]))  # pages read from disk as needed
    for shard in search.plan.shards:  # then the index in the page cache (`vmtouch -t`), as a serving index is
        for path in (work / "index" / shard.dir).iterdir():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    warm_s, warm_counts = zip(*(timed(search.count, q) for q in ngrams[half:]))
    counts = cold_counts + warm_counts
    scanned = ngrams[: max(3, queries // 20)]
    scan_count(chunks, scanned[0])  # the scan reads every chunk: its first pass puts them in the page cache
    scan_s, scan_counts = zip(*(timed(scan_count, chunks, q) for q in scanned))
    assert list(scan_counts) == list(counts[: len(scanned)]), "the index and the scan disagree"
    search_s = [timed(search.search, q, 10, 0)[0] for q in ngrams[:50]]
    traces = []
    for i in range(5):
        rows = chunks[i % len(chunks)]
        text = [*map(int, rows[i, 100:200]), *map(int, rng.integers(3, 32000, 100))]
        traces.append(timed(trace_ids, search, text, 8)[0])
    return {"method": "queries", "ngrams": queries, "tokens": int(sum(c.size for c in chunks)),
            "count_cold_median_ms": 1e3 * statistics.median(cold_s),
            "count_warm_median_ms": 1e3 * statistics.median(warm_s),
            "count_warm_p90_ms": 1e3 * sorted(warm_s)[int(0.9 * len(warm_s))],
            "scan_count_median_ms": 1e3 * statistics.median(scan_s),
            "scan_over_warm_count": statistics.median(scan_s) / statistics.median(warm_s),
            "scan_over_cold_count": statistics.median(scan_s) / statistics.median(cold_s),
            "search_median_ms": 1e3 * statistics.median(search_s),
            "trace_200_tokens_median_ms": 1e3 * statistics.median(traces),
            "median_count": statistics.median(counts)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1000, help="synthetic JSONL corpus size (1000 MB ~ 361M tokens)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--method", choices=["all", *METHODS], default="all")
    parser.add_argument("--work", help=argparse.SUPPRESS)  # corpus, tokenizer and data made by the parent run
    args = parser.parse_args()
    if args.work is None:
        if not LLAMA.is_file():
            sys.exit(f"needs the LLaMA tokenizer.model at {LLAMA} (infini-gram's own path tokenizes with it)")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            from k2hf import build_k2_tokenizer
            from k2hf.tokenizer import save_tokenizer

            save_tokenizer(build_k2_tokenizer(LLAMA), tmp / "tokenizer")
            make_corpus(tmp / "corpus", args.mb, args.files)
            prepared = prepare_data(tmp, args.workers, args.seq_len)
            print(json.dumps(_finish(prepared, args)), flush=True)
            for method in METHODS if args.method == "all" else [args.method]:
                code = os.system(f"{sys.executable} {__file__} --workers {args.workers} --queries {args.queries} "
                                 f"--method {method} --work {tmp}")
                if code:
                    sys.exit(code)
        return
    work = Path(args.work)
    if args.method == "k2hf-index":
        result = run_k2hf_index(work, args.workers)
    elif args.method == "infini-gram-indexing":
        result = run_infini_gram_indexing(work, args.workers)
    else:
        result = run_queries(work, args.queries)
    print(json.dumps(_finish(result, args)), flush=True)


def _finish(result: dict, args: argparse.Namespace) -> dict:
    if "seconds" in result:
        result["tokens_per_s"] = round(result["tokens"] / result["seconds"])
        result["seconds"] = round(result["seconds"], 2)
    for key, value in list(result.items()):
        if isinstance(value, float):
            result[key] = round(value, 3)
    result.update(workers=args.workers, peak_rss_mb=round(peak_rss_mb()))
    return result


if __name__ == "__main__":
    main()
