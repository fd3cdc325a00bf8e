"""``k2hf data prepare``: documents -> tokens -> fixed-length rows -> N evenly mixed, shuffled chunks.

1. Every source of every subset is tokenized in parallel worker processes into a shard (see :mod:`.shards`);
   finished shards survive an interrupted run.
2. Per subset, document instances are concatenated (repeat passes in order, each document ending in eos, no
   BOS) and cut into rows of ``seq_len`` tokens. The subset's last partial row is dropped and accounted for.
3. Row ``i`` of subset ``s`` goes to chunk ``(i + offset_s) % N``, with ``offset_s`` the number of rows dealt
   before subset ``s``: every subset is spread evenly over all chunks (per-subset chunk row counts differ by at
   most 1) and chunk sizes differ by at most 1 row.
4. Each chunk is shuffled with its own seed and written as a flat token file (``rows x seq_len``, memory-mapped
   by the trainer) plus the provenance of every piece of every row; ``manifest.json`` records config,
   tokenizer hash, counts and sha256 of every file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from k2hf.tokenizer import save_tokenizer, sentencepiece_model_of

from .config import DataConfig, DataConfigError, resolve_files
from .shards import BLOCK_RECORDS, ShardJob, build_shard, load_shard, shard_is_done

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PIECE_DTYPE = np.dtype(
    [
        ("row", "<i8"),  # row within the chunk (after shuffling)
        ("pos", "<i4"),  # first position of the piece in the row
        ("length", "<i4"),
        ("subset", "<i2"),
        ("source", "<i4"),  # index into manifest["subsets"][subset]["sources"]
        ("record", "<i8"),  # record (line) index in that source
        ("pass", "<i2"),  # repeat pass
        ("fim", "i1"),  # 0 plain, 1 PSM, 2 SPM
        ("offset", "<i8"),  # token offset of the piece inside its document
    ]
)


def listed_files(manifest: dict) -> set[str]:
    """The chunk files a manifest lists (relative paths); beside them a data dir holds only ``manifest.json``,
    its ``tokenizer/`` and the ``.work/`` scratch dir."""
    files = set()
    for info in manifest["chunks"]:
        files.update(f for f in (info.get("file"), info.get("pieces_file")) if f)
    return files


def unlisted_files(out: Path, manifest: dict) -> list[str]:
    """Files under ``out`` that ``manifest`` does not account for (e.g. left by an earlier, larger preparation)."""
    listed = listed_files(manifest) | {MANIFEST}
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in listed and not rel.startswith(("tokenizer/", ".work/")):
            found.append(rel)
    return found


def remove_unlisted(out: Path, manifest: dict) -> list[str]:
    """Delete what :func:`unlisted_files` finds; returns it."""
    stale = unlisted_files(out, manifest)
    for rel in stale:
        (out / rel).unlink()
    return stale


def chunk_file(index: int) -> str:
    return f"chunks/chunk_{index:05d}.bin"


def pieces_file(index: int) -> str:
    return f"chunks/chunk_{index:05d}.pieces.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def load_tokenizer(spec: str, base_dir: str, work_dir: Path):
    """``sample`` (the tiny demo tokenizer), a dir with tokenizer.json, a LLaMA tokenizer.model / its dir, or a
    Hub repo id with a tokenizer (``LLM360/K2``)."""
    from transformers import AutoTokenizer

    from k2hf.tokenizer import build_k2_tokenizer

    if spec == "sample":
        from k2hf.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer(work_dir / "sample-tokenizer")
    path = Path(spec) if os.path.isabs(spec) else Path(base_dir) / spec
    if (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path)
    if not path.exists() and spec.count("/") == 1 and not spec.startswith((".", "~")):
        return AutoTokenizer.from_pretrained(spec)  # a Hub repo id, e.g. LLM360/K2
    return build_k2_tokenizer(path)


def prepare(config: DataConfig, out: str | os.PathLike, keep_work: bool = False, progress: bool = True) -> dict:
    """Run the whole preparation into ``out``; returns the manifest."""
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.tokenizer, config.base_dir, work)
    save_tokenizer(tokenizer, out / "tokenizer")
    tokenizer_hash = sha256_file(out / "tokenizer" / "tokenizer.json")
    sources = {s.name: (resolve_files(s, config.base_dir) if s.hub is None else [f"hub:{s.hub['path']}"])
               for s in config.subsets}
    jobs = _shard_jobs(config, sources, tokenizer, tokenizer_hash, work)
    shard_stats = _run_jobs(jobs, config.num_workers, progress)
    dtype = token_dtype(len(tokenizer))
    manifest = _pack(config, sources, jobs, shard_stats, out, dtype, progress)
    if manifest["total_rows"] == 0:
        tokens = ", ".join(f"{s['name']} {s['tail_tokens_dropped']} tokens from {s['documents_read']} documents"
                           for s in manifest["subsets"])
        raise DataConfigError(f"the mixture yields no row of {config.seq_len} tokens ({tokens}): add documents or "
                              "lower seq_len")
    manifest["tokenizer"] = {"sha256": tokenizer_hash, "vocab": len(tokenizer), "path": "tokenizer"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    stale = remove_unlisted(out, manifest)
    if stale:
        logger.info("removed %d files of an earlier preparation in %s that the new manifest does not list",
                    len(stale), out)
    if not keep_work:
        shutil.rmtree(work)
    return manifest


def _shard_jobs(config: DataConfig, sources: dict, tokenizer, tokenizer_hash: str, work: Path) -> list[ShardJob]:
    fim_ids = tuple(tokenizer.convert_tokens_to_ids(["<fim_prefix>", "<fim_middle>", "<fim_suffix>"]))
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    sp_model = sentencepiece_model_of(tokenizer)
    jobs = []
    for s_index, subset in enumerate(config.subsets):
        for f_index, source in enumerate(sources[subset.name]):
            stat = _stat_or_none(source)
            fingerprint = hashlib.sha256(json.dumps([
                subset.__dict__, source, stat and [stat.st_size, stat.st_mtime_ns], tokenizer_hash, config.seed,
                config.fim.__dict__, config.on_error, BLOCK_RECORDS, FORMAT_VERSION, config.tokenization,
            ], sort_keys=True, default=str).encode()).hexdigest()
            jobs.append(ShardJob(
                subset=subset, subset_index=s_index, source_index=f_index, source=source,
                out_dir=str(work / "shards" / f"{s_index:03d}-{f_index:06d}"), tokenizer_json=tokenizer_json,
                sp_model=str(sp_model) if sp_model else None,
                eos_id=tokenizer.eos_token_id, fim_ids=fim_ids, fim_rate=config.fim.rate,
                spm_rate=config.fim.spm_rate, seed=config.seed, fail_on_error=config.on_error == "fail",
                fingerprint=fingerprint, tokenization=config.tokenization,
            ))
    return jobs


def _stat_or_none(source: str) -> os.stat_result | None:
    """File identity for the shard fingerprint; None for Hub sources and unreadable files (reported later)."""
    if source.startswith("hub:"):
        return None
    try:
        return os.stat(source)
    except OSError:
        return None


def _run_jobs(jobs: list[ShardJob], num_workers: int, progress: bool) -> list[dict]:
    """Build missing shards in parallel (progress: docs/s and tokens/s); finished shards are reused."""
    stats: dict[int, dict] = {}
    pending = []
    for i, job in enumerate(jobs):
        if shard_is_done(job):
            stats[i] = load_shard(job.out_dir)[2]
        else:
            pending.append(i)
    bar = tqdm(total=len(jobs), initial=len(stats), desc="tokenize", unit="shard", disable=not progress)
    docs = tokens = 0
    start = time.perf_counter()

    def record(i: int, result: dict) -> None:
        nonlocal docs, tokens
        stats[i] = result
        docs += result["records_read"]
        tokens += result["tokens"]
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(docs_s=f"{docs / elapsed:,.0f}", tok_s=f"{tokens / elapsed:,.0f}")
        bar.update()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if num_workers == 1 or len(pending) <= 1:
        for i in pending:
            record(i, build_shard(jobs[i]))
    else:
        with ProcessPoolExecutor(max_workers=min(num_workers, len(pending))) as pool:
            futures = {i: pool.submit(build_shard, jobs[i]) for i in pending}
            for i, future in futures.items():
                record(i, future.result())
    bar.close()
    return [stats[i] for i in range(len(jobs))]


class _ChunkWriter:
    """Appends rows and their provenance to per-chunk temp files (bounded memory), then shuffles each chunk."""

    def __init__(self, tmp: Path, num_chunks: int, seq_len: int, dtype: np.dtype) -> None:
        self.tmp, self.seq_len, self.dtype = tmp, seq_len, dtype
        tmp.mkdir(parents=True, exist_ok=True)
        self.rows = [0] * num_chunks
        self.handles: dict[int, object] = {}
        self.pieces: list[list[tuple]] = [[] for _ in range(num_chunks)]
        self.piece_files: dict[int, object] = {}

    def add(self, chunk: int, row: np.ndarray, pieces: list[tuple]) -> None:
        if chunk not in self.handles:
            self.handles[chunk] = open(self.tmp / f"{chunk}.rows", "wb")
        self.handles[chunk].write(row.astype(self.dtype).tobytes())
        index = self.rows[chunk]
        self.pieces[chunk].extend((index, *p) for p in pieces)
        self.rows[chunk] += 1
        if len(self.pieces[chunk]) >= 65536:
            self._flush_pieces(chunk)

    def _flush_pieces(self, chunk: int) -> None:
        if chunk not in self.piece_files:
            self.piece_files[chunk] = open(self.tmp / f"{chunk}.pieces", "wb")
        self.piece_files[chunk].write(np.array(self.pieces[chunk], dtype=PIECE_DTYPE).tobytes())
        self.pieces[chunk] = []

    def finalize(self, out: Path, seed: int, progress: bool) -> list[dict]:
        """Shuffle every chunk with its own seed and write the final token and provenance files."""
        for chunk in range(len(self.rows)):
            if self.pieces[chunk]:
                self._flush_pieces(chunk)
        for handle in [*self.handles.values(), *self.piece_files.values()]:
            handle.close()
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        results = []
        for chunk in tqdm(range(len(self.rows)), desc="write chunks", unit="chunk", disable=not progress):
            results.append(self._write_chunk(chunk, out, seed))
        return results

    def _write_chunk(self, chunk: int, out: Path, seed: int) -> dict:
        n = self.rows[chunk]
        order = np.random.default_rng([seed, 0x5EED, chunk]).permutation(n)
        token_path, piece_path = out / chunk_file(chunk), out / pieces_file(chunk)
        with open(token_path, "wb") as f:
            if n:
                rows = np.memmap(self.tmp / f"{chunk}.rows", dtype=self.dtype, mode="r").reshape(n, self.seq_len)
                for i in range(0, n, 1024):
                    f.write(np.ascontiguousarray(rows[order[i : i + 1024]]).tobytes())
        pieces = np.zeros(0, PIECE_DTYPE)
        if (self.tmp / f"{chunk}.pieces").is_file():
            pieces = np.fromfile(self.tmp / f"{chunk}.pieces", dtype=PIECE_DTYPE)
            new_row = np.empty(n, np.int64)
            new_row[order] = np.arange(n)
            pieces["row"] = new_row[pieces["row"]]
            pieces = pieces[np.lexsort((pieces["pos"], pieces["row"]))]
        np.save(piece_path, pieces)
        return {"rows": n, "sha256": sha256_file(token_path), "pieces_sha256": sha256_file(piece_path)}


def _pack(config: DataConfig, sources: dict, jobs: list[ShardJob], shard_stats: list[dict], out: Path,
          dtype: np.dtype, progress: bool) -> dict:
    n_chunks, seq_len = config.num_chunks, config.seq_len
    writer = _ChunkWriter(out / ".work" / "rows", n_chunks, seq_len, dtype)
    chunk_subset_rows = np.zeros((n_chunks, len(config.subsets)), dtype=np.int64)
    subsets_report = []
    dealt = 0
    total = sum(int(load_shard(job.out_dir)[1]["length"].sum()) for job in jobs)  # tokens incl. repeats
    bar = tqdm(total=total, desc="pack rows", unit="tok", unit_scale=True, disable=not progress)
    for s_index, subset in enumerate(config.subsets):
        mine = [(job, stats) for job, stats in zip(jobs, shard_stats) if job.subset_index == s_index]
        offset = dealt % n_chunks
        row = np.empty(seq_len, np.uint32)
        fill = 0
        row_pieces: list[tuple] = []
        rows = instances = tokens_packed = fim_instances = first_pass = 0
        tail = _DroppedTail()
        per_file_rows = config.tokenization == "k2_release"
        for repeat_pass in range(math.ceil(subset.repeat)):
            for job, _ in mine:
                shard_tokens, table, _ = load_shard(job.out_dir)
                lo, hi = np.searchsorted(table["pass"], [repeat_pass, repeat_pass + 1])
                for inst in table[lo:hi]:
                    start, length, done = int(inst["start"]), int(inst["length"]), 0
                    instances += 1
                    first_pass += repeat_pass == 0
                    fim_instances += bool(inst["fim"])
                    while done < length:
                        take = min(length - done, seq_len - fill)
                        row[fill : fill + take] = shard_tokens[start + done : start + done + take]
                        row_pieces.append((fill, take, s_index, job.source_index, int(inst["record"]),
                                           repeat_pass, int(inst["fim"]), done))
                        fill += take
                        done += take
                        if fill == seq_len:
                            chunk = (rows + offset) % n_chunks
                            writer.add(chunk, row, row_pieces)
                            chunk_subset_rows[chunk, s_index] += 1
                            rows += 1
                            tokens_packed += seq_len
                            bar.update(seq_len)
                            fill, row_pieces = 0, []
                if per_file_rows:  # k2_release: rows never cross files; each file's remainder is dropped
                    tail.drop(fill, row_pieces)
                    fill, row_pieces = 0, []
        tail.drop(fill, row_pieces)  # the subset's last partial row
        dealt += rows
        subsets_report.append(_subset_report(
            subset, sources[subset.name], [s for _, s in mine], rows=rows, instances=instances - tail.instances,
            fim_instances=fim_instances - tail.fim_instances, tokens_packed=tokens_packed, tail_tokens=tail.tokens,
            documents_packed=first_pass - tail.first_pass_documents, dropped_docs=tail.first_pass_documents,
        ))
    bar.close()
    chunk_results = writer.finalize(out, config.seed, progress)
    chunks = [
        {"index": i, "file": chunk_file(i), "pieces_file": pieces_file(i), "tokens": r["rows"] * seq_len,
         "subset_rows": {s.name: int(chunk_subset_rows[i, j]) for j, s in enumerate(config.subsets)}, **r}
        for i, r in enumerate(chunk_results)
    ]
    return {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "seq_len": seq_len,
        "dtype": dtype.name,
        "num_chunks": n_chunks,
        "chunk_order": config.resolved_order(),
        "total_rows": int(sum(c["rows"] for c in chunks)),
        "subsets": subsets_report,
        "chunks": chunks,
    }


class _DroppedTail:
    """Tokens of partial rows that are dropped, and the document instances that lay wholly inside them."""

    def __init__(self) -> None:
        self.tokens = self.instances = self.fim_instances = self.first_pass_documents = 0

    def drop(self, fill: int, row_pieces: list[tuple]) -> None:
        started_here = [p for p in row_pieces if p[7] == 0]  # document offset 0: began (and ended) in this row
        self.tokens += fill
        self.instances += len(started_here)
        self.fim_instances += sum(1 for p in started_here if p[6])
        self.first_pass_documents += sum(1 for p in started_here if p[5] == 0)


def _subset_report(subset, sources: list[str], stats: list[dict], *, rows: int, instances: int, fim_instances: int,
                   tokens_packed: int, tail_tokens: int, documents_packed: int, dropped_docs: int) -> dict:
    """Per-subset counts; ``documents_read == documents_packed + sum(documents_skipped)`` is checked by verify."""
    skipped: dict[str, int] = {}
    for s in stats:
        for reason, count in s["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
    not_sampled = sum(s["not_sampled"] for s in stats)
    if not_sampled:
        skipped["not_sampled"] = not_sampled
    if dropped_docs:
        skipped["incomplete_final_row"] = dropped_docs
    read = sum(s["records_read"] for s in stats)
    return {
        "name": subset.name,
        "sources": sources,
        "repeat": subset.repeat,
        "fim": subset.fim,
        "documents_read": read,
        "documents_packed": documents_packed,
        "documents_skipped": skipped,
        "skip_examples": [e for s in stats for e in s["skip_examples"]][:10],
        "instances_packed": instances,
        "fim_instances": fim_instances,
        "rows": rows,
        "tokens": tokens_packed,
        "tail_tokens_dropped": tail_tokens,
    }
