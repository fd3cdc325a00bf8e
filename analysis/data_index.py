"""An infini-gram index over prepared data: the training rows' own token ids, searchable in milliseconds.

infini-gram (Liu et al. 2024; PyPI ``infini-gram``, the ``search`` extra) answers n-gram counts and finds over
suffix arrays of token ids. Its indexer tokenizes text; here the ids already exist (what was trained on), so
each shard's infini-gram files are written straight from the chunk files and only the suffix array is built by
the indexer binary the wheel ships (``rust_indexing make-part -> merge -> concat``, driven as its
``indexing.py`` drives it, with the memory per part bounded).

Layout of an index dir::

    index.json            the plan: data dir + its manifest sha256, seq_len, dtype, shards and their chunks
    shard_000/            one infini-gram index dir per shard (``InfiniGramEngine`` takes the list)
        tokenized.0       per training row: the separator (all ones) then the row's ids, little-endian
        offset.0          u64 byte offset of every row's separator
        metadata.0        per row one JSON line {"chunk": c, "row": r}; metaoff.0 its u64 offsets
        table.0           the suffix array (``rust_indexing``)
        shard.json        written last: this shard is complete (a rerun skips it)

One infini-gram *document* per training row, in chunk then row order, so a row's document index is arithmetic
and a span across two rows is never found (rows are what the model saw as sequences). Shards are contiguous
groups of chunks, built as independent tasks on the executors ``data prepare`` uses (local, Slurm, Ray).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from k2hf.errors import UserError
from k2hf.pretrain.data.reader import PreparedData

logger = logging.getLogger(__name__)

INDEX_JSON = "index.json"
SHARD_JSON = "shard.json"
FORMAT = "k2hf-infini-gram"
FORMAT_VERSION = 1
SUFFIX_HACK = 100_000  # bytes each make-part range reads past its end (infini-gram's indexing.py uses the same)
ROWS_PER_WRITE = 4096
SLURM_SCRIPT = "index.slurm"  # the sbatch script of a Slurm build (written, and submitted unless a dry run)


class SearchError(UserError):
    """An index that cannot be built or used as asked (missing extra, other data, an incomplete build)."""


def infini_gram_package() -> Path:
    """The installed ``infini_gram`` package dir (its engine and indexer binary), or a one-line error."""
    try:
        import infini_gram
    except ImportError:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise SearchError(f"data search needs infini-gram: pip install 'k2hf[search]' (it publishes Linux x86-64 "
                          f"wheels for CPython 3.11-3.13 only; this is Python {version} on {sys.platform})") from None
    return Path(infini_gram.__file__).parent


def infini_gram_version() -> str:
    from importlib.metadata import version

    return version("infini-gram")


@dataclass
class ShardPlan:
    """Shard ``index``: the chunks (in chunk order) whose rows are its documents, and their row counts."""

    index: int
    chunks: list[int]
    rows: list[int]

    @property
    def dir(self) -> str:
        return f"shard_{self.index:03d}"

    @property
    def documents(self) -> int:
        return sum(self.rows)


@dataclass
class IndexPlan:
    """``index.json``: which data an index was built from and how it is sharded."""

    data_dir: str
    data_manifest_sha256: str
    seq_len: int
    dtype: str
    vocab: int
    shards: list[ShardPlan]
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    infini_gram_version: str = ""
    mem_gb: float = 4.0

    @property
    def token_width(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def separator(self) -> int:
        """The id value infini-gram reads as a document separator (all ones): never a token of the data."""
        return int(np.iinfo(np.dtype(self.dtype)).max)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, index_dir: str | os.PathLike) -> IndexPlan:
        path = Path(index_dir) / INDEX_JSON
        if not path.is_file():
            raise SearchError(f"{index_dir} is not a k2hf data index (no {INDEX_JSON}): build one with "
                              "`k2hf data index DATA_DIR --out INDEX`")
        values = json.loads(path.read_text())
        if values.get("format") != FORMAT or values.get("format_version", 0) > FORMAT_VERSION:
            raise SearchError(f"{path}: not a k2hf index of format version <= {FORMAT_VERSION} (written by a newer "
                              "k2hf?)")
        values["shards"] = [ShardPlan(**s) for s in values["shards"]]
        return cls(**values)


def plan_index(data: PreparedData, shards: int = 1, mem_gb: float = 4.0) -> IndexPlan:
    """Deal the data's non-empty chunks into ``shards`` contiguous groups of near-equal rows."""
    present = [c.index for c in data.manifest.chunks if c.rows]
    if not present:
        raise SearchError(f"{data.path} holds no rows to index")
    separator = int(np.iinfo(data.dtype).max)
    if data.manifest.vocab > separator:
        raise SearchError(f"{data.path}: its tokenizer has {data.manifest.vocab} ids and {data.dtype} data uses "
                          f"id {separator} as infini-gram's document separator")
    if shards < 1:
        raise SearchError(f"--shards must be >= 1 (got {shards})")
    shards = min(shards, len(present))
    rows = np.array([data.rows(c) for c in present])
    # cut where the running row count crosses each equal share
    cuts = np.searchsorted(np.cumsum(rows), np.arange(1, shards) * rows.sum() / shards, side="left") + 1
    groups = [g.tolist() for g in np.split(np.array(present), np.unique(np.clip(cuts, 1, len(present) - 1)))]
    return IndexPlan(
        data_dir=str(data.path.resolve()), data_manifest_sha256=data.manifest_sha256, seq_len=data.seq_len,
        dtype=data.dtype.name, vocab=data.manifest.vocab, mem_gb=mem_gb, infini_gram_version=infini_gram_version(),
        shards=[ShardPlan(i, g, [data.rows(c) for c in g]) for i, g in enumerate(groups)])


def shard_is_built(index_dir: Path, shard: ShardPlan, plan: IndexPlan) -> bool:
    path = index_dir / shard.dir / SHARD_JSON
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    return done.get("chunks") == shard.chunks and done.get("data_manifest_sha256") == plan.data_manifest_sha256


def build_shard(index_dir: Path, plan: IndexPlan, shard: ShardPlan, cpus: int = 1) -> dict:
    """Write shard ``shard``'s infini-gram files from its chunks and build its suffix array; returns its counts."""
    data = PreparedData(plan.data_dir)
    out = index_dir / shard.dir
    out.mkdir(parents=True, exist_ok=True)
    tokens = _write_documents(data, plan, shard, out)
    _build_suffix_array(out / "tokenized.0", out / "table.0", plan.token_width, plan.mem_gb, cpus)
    stats = {"chunks": shard.chunks, "documents": shard.documents, "tokens": tokens,
             "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
             "data_manifest_sha256": plan.data_manifest_sha256}
    tmp = out / (SHARD_JSON + ".tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    os.replace(tmp, out / SHARD_JSON)
    return stats


def _write_documents(data: PreparedData, plan: IndexPlan, shard: ShardPlan, out: Path) -> int:
    """``tokenized.0``, ``offset.0``, ``metadata.0``, ``metaoff.0``: one document per row, in blocks of rows."""
    width, length = plan.token_width, plan.seq_len + 1
    dtype = np.dtype(plan.dtype).newbyteorder("<")
    doc_bytes = length * width
    tokens = 0
    with open(out / "tokenized.0", "wb") as tokenized, open(out / "metadata.0", "wb") as metadata, \
            open(out / "metaoff.0", "wb") as metaoff:
        meta_at = 0
        for chunk in shard.chunks:
            rows = data.chunk(chunk).tokens
            for start in range(0, len(rows), ROWS_PER_WRITE):
                block = np.asarray(rows[start:start + ROWS_PER_WRITE])
                docs = np.empty((len(block), length), dtype)
                docs[:, 0] = plan.separator
                docs[:, 1:] = block
                tokenized.write(docs.tobytes())
                tokens += block.size
                lines = [f'{{"chunk": {chunk}, "row": {start + i}}}\n'.encode() for i in range(len(block))]
                sizes = np.fromiter((len(line) for line in lines), np.uint64, len(lines))
                metaoff.write((meta_at + np.cumsum(sizes) - sizes).astype("<u8").tobytes())
                meta_at += int(sizes.sum())
                metadata.write(b"".join(lines))
    (np.arange(shard.documents, dtype="<u8") * doc_bytes).tofile(out / "offset.0")
    return tokens


def _build_suffix_array(tokenized: Path, table: Path, width: int, mem_gb: float, cpus: int) -> None:
    """infini-gram's three indexer steps over ``tokenized``; each make-part job's range is sized so that it fits
    ``mem_gb`` (the indexer needs ~8 bytes of memory per byte of a part for u16 ids, 12 for u8)."""
    binary = infini_gram_package() / "rust_indexing"
    size = tokenized.stat().st_size
    ratio = max(1, math.ceil(math.log2(size) / 8))  # bytes per suffix-array pointer
    budget = int(mem_gb * 1024**3) // (12 if width == 1 else 8)
    batches = 1
    while batches * budget < size:
        batches *= 2
    jobs = batches * cpus
    part = size // jobs
    part += (width - part % width) % width  # parts hold whole tokens
    work = table.parent / ".work"
    shutil.rmtree(work, ignore_errors=True)
    parts, merged = work / "parts", work / "merged"
    parts.mkdir(parents=True)
    merged.mkdir()
    common = ["--data-file", str(tokenized), "--ratio", str(ratio)]
    ranges = [(i * part, min((i + 1) * part + SUFFIX_HACK, size)) for i in range(jobs) if i * part < size]
    for start in range(0, len(ranges), cpus):
        running = [subprocess.Popen([binary, "make-part", *common, "--parts-dir", str(parts), "--start-byte",
                                     str(a), "--end-byte", str(b), "--token-width", str(width)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for a, b in ranges[start:start + cpus]]
        for process in running:
            _check(process, "make-part")
    _check(subprocess.Popen([binary, "merge", *common, "--parts-dir", str(parts), "--merged-dir", str(merged),
                             "--num-threads", str(cpus), "--hacksize", str(SUFFIX_HACK), "--token-width", str(width)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), "merge")
    partial = table.with_name(table.name + ".tmp")
    _check(subprocess.Popen([binary, "concat", *common, "--merged-dir", str(merged), "--merged-file", str(partial),
                             "--num-threads", str(cpus), "--token-width", str(width)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), "concat")
    os.replace(partial, table)
    shutil.rmtree(work)


def _check(process: subprocess.Popen, step: str) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"infini-gram's rust_indexing {step} failed (exit {process.returncode}): "
                           f"{err.decode(errors='replace').strip()[-500:]}")


class IndexShardsStep(PipelineStep):
    """The datatrove task that builds shards ``rank, rank + world_size, ...``; a shard with its ``shard.json`` is
    skipped (that record, not datatrove's task record, says what is built)."""

    name = "k2hf data index"
    type = "k2hf"

    def __init__(self, index_dir: str, cpus: int = 1) -> None:
        super().__init__()
        self.index_dir, self.cpus = index_dir, cpus

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        index_dir = Path(self.index_dir)
        plan = IndexPlan.read(index_dir)
        for shard in plan.shards[rank::world_size]:
            if not shard_is_built(index_dir, shard, plan):
                stats = build_shard(index_dir, plan, shard, self.cpus)
                self.stat_update("tokens", value=stats["tokens"])
        yield from ()


def build_index(data_dir: str | os.PathLike, out: str | os.PathLike, shards: int = 1, mem_gb: float = 4.0,
                executor: str = "local", tasks: int | None = None, workers: int = 1, cpus_per_task: int = 1,
                slurm=None, ray_address: str | None = None, dry_run: bool = False,
                progress: bool = True) -> IndexPlan | None:
    """Index ``data_dir`` into ``out`` (resumable: built shards are kept). Returns the plan once every shard is
    built; ``None`` when the shards went to Slurm (``out/index.slurm`` holds the script; rerun after the jobs
    finish to check the index)."""
    from k2hf.pretrain.data.executors import run_step

    infini_gram_package()
    data = PreparedData(data_dir)
    out = Path(out)
    plan = plan_index(data, shards, mem_gb)
    existing = out / INDEX_JSON
    if existing.is_file():
        old = IndexPlan.read(out)
        if old.data_manifest_sha256 != plan.data_manifest_sha256 or \
                [s.chunks for s in old.shards] != [s.chunks for s in plan.shards]:
            raise SearchError(f"{out} holds an index of other data or another sharding ({len(old.shards)} shards of "
                              f"{old.data_dir}): remove it or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    existing.write_text(plan.to_json())
    todo = [s for s in plan.shards if not shard_is_built(out, s, plan)]
    logger.info("index %s: %d shard(s), %d to build", out, len(plan.shards), len(todo))
    if todo:
        count = max(1, min(tasks or len(plan.shards), len(plan.shards)))
        submitted = run_step(IndexShardsStep(str(out.resolve()), cpus_per_task), tasks=count, workers=workers,
                             logging_dir=str(out / ".logs" / f"index-t{count}"), executor=executor, slurm=slurm,
                             ray_address=ray_address, dry_run=dry_run, progress=progress, desc="index shards",
                             done=lambda: sum(shard_is_built(out, s, plan) for s in plan.shards) - (
                                 len(plan.shards) - len(todo)), total=len(todo), skip_completed=False)
        if submitted:
            (out / SLURM_SCRIPT).write_text(submitted[0])
            return None
    missing = [s.index for s in plan.shards if not shard_is_built(out, s, plan)]
    if missing:
        raise SearchError(f"shards {missing} of {out} were not built (rerun `k2hf data index` to finish)")
    return plan


def index_size(index_dir: str | os.PathLike) -> dict:
    """Documents, tokens and bytes on disk of a built index (from its shards' records)."""
    index_dir = Path(index_dir)
    plan = IndexPlan.read(index_dir)
    shards = [json.loads((index_dir / s.dir / SHARD_JSON).read_text()) for s in plan.shards]
    return {"shards": len(shards), "documents": sum(s["documents"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards), "bytes": sum(s["bytes"] for s in shards)}


__all__ = ["INDEX_JSON", "SLURM_SCRIPT", "IndexPlan", "IndexShardsStep", "SearchError", "ShardPlan", "build_index",
           "build_shard", "index_size", "infini_gram_package", "plan_index", "shard_is_built"]
