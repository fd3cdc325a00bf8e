"""``k2hf data prepare`` as one linear pipeline: four stages that talk only through files.

======  ==============  ====================================  =====================================================
stage   tasks           reads                                 writes
======  ==============  ====================================  =====================================================
1       one per group   the subsets' source files             ``.work/shards/SSS-FFFFFF/``: tokens, document
        of sources                                            instances (record, repeat pass, FIM, span), counts
2       1               the shards' counts and instances      ``.work/<run>/plan.json``: rows per subset, which
                                                              chunk each row goes to, the dropped tails
3       one per group   ``plan.json`` + the shards            ``chunks/chunk_N.bin`` + ``.pieces.npy`` and
        of chunks                                             ``.work/<run>/written/chunk_N.json`` (counts, sha256)
4       1               ``plan.json`` + ``written/*.json``    ``manifest.json``
======  ==============  ====================================  =====================================================

Each stage is a :class:`datatrove.pipeline.base.PipelineStep` whose task ``rank`` of ``world_size`` does a fixed
share of the work (sources ``rank::world_size``, chunks ``rank::world_size``), so the output is the same bytes
whatever the executor (local, Slurm, Ray) and however many tasks or workers run it. A task writes its files
under temporary names and renames them into place, and datatrove records finished tasks, so a rerun after a crash
or a kill redoes only the unfinished ones. A task's memory is bounded by its own share: a tokenize task streams
its files in blocks; a chunk task holds one chunk's provenance and copies its rows through a file on disk.

How rows are dealt (stage 2): per subset, document instances are concatenated (repeat passes in order, each
document ending in eos, no BOS; with ``tokenization: k2_release`` rows never cross a file) and cut into rows of
``seq_len`` tokens; partial rows are dropped and accounted for. Row ``i`` of subset ``s`` goes to chunk
``(i + offset_s) % N``, ``offset_s`` being the number of rows dealt before subset ``s``: every subset is spread
evenly (per-subset chunk row counts differ by at most 1). Stage 3 shuffles each chunk with its own seed.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from k2hf.formats.prepared_data import (
    FORMAT_VERSION,
    MANIFEST,
    PIECE_DTYPE,
    ChunkEntry,
    Manifest,
    SubsetReport,
    TokenizerEntry,
    chunk_file,
    chunk_order_permutation,
    is_url,
    pieces_file,
    publish,
    remove_unlisted,
    remove_unlisted_remote,
    sha256_file,
)
from k2hf.recipes import RecipeError

from .config import DataConfig
from .shards import Shard, ShardJob, build_shard, shard_is_done

logger = logging.getLogger(__name__)

PLAN = "plan.json"
WRITTEN = "written"
ROW_BLOCK = 1024  # rows copied at a time when a chunk is shuffled into its final file


@dataclass
class PrepareRun:
    """What every task of one preparation needs (picklable: executors ship it to their workers)."""

    config: DataConfig
    jobs: list[ShardJob]
    out: str  # a local path, or an fsspec URL
    stage: str  # where output files are written first: OUT itself when local, else a dir under the work dir
    run_dir: str  # <work>/run-<fingerprint>: plan, per-chunk results, executor logs
    dtype: str
    tokenizer: dict  # manifest["tokenizer"]

    @property
    def plan_path(self) -> Path:
        return Path(self.run_dir) / PLAN

    def written_path(self, chunk: int) -> Path:
        return Path(self.run_dir) / WRITTEN / f"chunk_{chunk:05d}.json"


class _PrepareStep(PipelineStep):
    """A pipeline stage: every task carries the whole (picklable) run description."""

    type = "k2hf"

    def __init__(self, run: PrepareRun) -> None:
        super().__init__()
        self.run_spec = run


# ---------------------------------------------------------------- stage 1: tokenize
class TokenizeStep(_PrepareStep):
    """Tokenize this task's share of the sources into shards (finished shards are kept and reused)."""

    name = "k2hf tokenize"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for job in self.run_spec.jobs[rank::world_size]:
            if not shard_is_done(job):
                stats = build_shard(job)
                self.stat_update("documents", value=stats["records_read"])
                self.stat_update("tokens", value=stats["tokens"])
        yield from ()


# ---------------------------------------------------------------- stage 2: plan
class PlanStep(_PrepareStep):
    """One small task: rows per subset, their chunks, and the accounting of what is dropped."""

    name = "k2hf plan"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank == 0:
            plan = make_plan(self.run_spec)
            _write_json_atomic(self.run_spec.plan_path, plan.to_dict())
        yield from ()


@dataclass(frozen=True)
class Segment:
    """A stretch of a token stream: shard ``job``'s instances of one repeat pass, from ``token_start`` on."""

    job: int
    repeat_pass: int
    token_start: int
    tokens: int


@dataclass(frozen=True)
class StreamPlan:
    """One token stream cut into rows ``row_start .. row_start + rows`` of its subset."""

    row_start: int
    rows: int
    segments: list[Segment]


@dataclass(frozen=True)
class SubsetPlan:
    """A subset's rows: dealt round-robin over the chunks from chunk ``offset`` on; its streams; its report."""

    offset: int
    rows: int
    streams: list[StreamPlan]
    report: SubsetReport


@dataclass(frozen=True)
class Plan:
    """Stage 2's result (``plan.json``), read by every write task."""

    seq_len: int
    num_chunks: int
    subsets: list[SubsetPlan]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Plan:
        subsets = [SubsetPlan(s["offset"], s["rows"],
                              [StreamPlan(t["row_start"], t["rows"], [Segment(**g) for g in t["segments"]])
                               for t in s["streams"]], SubsetReport(**s["report"])) for s in raw["subsets"]]
        return cls(raw["seq_len"], raw["num_chunks"], subsets)

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class StreamCounts:
    """What a stream holds, and what of it falls into the partial row at its end (dropped)."""

    rows: int = 0
    instances: int = 0
    fim: int = 0
    first_pass: int = 0
    tail_tokens: int = 0
    tail_instances: int = 0
    tail_fim: int = 0
    tail_first_pass: int = 0

    def __add__(self, other: StreamCounts) -> StreamCounts:
        return StreamCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def make_plan(run: PrepareRun) -> Plan:
    """Per subset: its token streams (one, or one per file and pass for ``k2_release``), rows, chunk offset and
    report. Reads the shards' counts, and of the instance tables only the stretch a dropped partial row falls in."""
    config = run.config
    n, seq_len = config.num_chunks, config.seq_len
    subsets, dealt = [], 0
    for s_index, subset in enumerate(config.subsets):
        mine = [(j, job) for j, job in enumerate(run.jobs) if job.subset_index == s_index]
        segments = [(p, j, job) for p in range(math.ceil(subset.repeat)) for j, job in mine]
        streams = [segments] if config.tokenization == "default" else [[s] for s in segments]
        counts, stream_plans = StreamCounts(), []
        for stream in streams:
            stream_plan, stream_counts = _plan_stream(stream, seq_len, row_start=counts.rows)
            stream_plans.append(stream_plan)
            counts += stream_counts
        offset = dealt % n
        dealt += counts.rows
        stats = [Shard(job.out_dir).meta for _, job in mine]
        report = _subset_report(
            subset, [job.source for _, job in mine], stats, rows=counts.rows,
            instances=counts.instances - counts.tail_instances, fim_instances=counts.fim - counts.tail_fim,
            tokens_packed=counts.rows * seq_len, tail_tokens=counts.tail_tokens,
            documents_packed=counts.first_pass - counts.tail_first_pass, dropped_docs=counts.tail_first_pass)
        subsets.append(SubsetPlan(offset, counts.rows, stream_plans, report))
    return Plan(seq_len, n, subsets)


def _plan_stream(stream: list[tuple[int, int, ShardJob]], seq_len: int, row_start: int
                 ) -> tuple[StreamPlan, StreamCounts]:
    """One token stream: its segments (a shard's instances of one pass), rows, and the dropped partial row."""
    segments, total, instances, fim, first_pass = [], 0, 0, 0, 0
    for repeat_pass, j, job in stream:  # counts only: the shards' meta.json
        this = Shard(job.out_dir).meta["passes"][repeat_pass]
        segments.append(Segment(j, repeat_pass, total, this["tokens"]))
        instances, fim = instances + this["instances"], fim + this["fim"]
        first_pass += this["instances"] if repeat_pass == 0 else 0
        total += this["tokens"]
    rows = total // seq_len
    cut = rows * seq_len
    tail_instances = tail_fim = tail_first_pass = 0
    for segment, (repeat_pass, _, job) in zip(segments, stream):
        if segment.token_start + segment.tokens <= cut:
            continue
        # instances starting in the dropped partial row are dropped whole
        table, ends = Shard(job.out_dir).pass_instances(repeat_pass)
        dropped = segment.token_start + np.asarray(ends) - table["length"] >= cut
        tail_instances += int(dropped.sum())
        tail_fim += int(np.count_nonzero(table["fim"][dropped]))
        tail_first_pass += int(dropped.sum()) if repeat_pass == 0 else 0
    counts = StreamCounts(rows, instances, fim, first_pass, total - cut, tail_instances, tail_fim, tail_first_pass)
    return StreamPlan(row_start, rows, segments), counts


def _subset_report(subset, sources: list[str], stats: list[dict], *, rows: int, instances: int, fim_instances: int,
                   tokens_packed: int, tail_tokens: int, documents_packed: int, dropped_docs: int) -> SubsetReport:
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
    return SubsetReport(
        name=subset.name, sources=sources, repeat=subset.repeat, fim=subset.fim,
        documents_read=sum(s["records_read"] for s in stats), documents_packed=documents_packed,
        documents_skipped=skipped, skip_examples=[e for s in stats for e in s["skip_examples"]][:10],
        instances_packed=instances, fim_instances=fim_instances, rows=rows, tokens=tokens_packed,
        tail_tokens_dropped=tail_tokens)


# ---------------------------------------------------------------- stage 3: write chunks
class WriteChunksStep(_PrepareStep):
    """Assemble, shuffle and write this task's share of the chunks."""

    name = "k2hf write chunks"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        run = self.run_spec
        plan = Plan.read(run.plan_path)
        chunks = range(rank, run.config.num_chunks, world_size)
        for chunk in chunks:
            result_path = run.written_path(chunk)
            if result_path.is_file():  # written by an earlier, interrupted attempt of this task
                continue
            result = _ChunkAssembler(run, plan, chunk).write()
            self.stat_update("rows", value=result["rows"])
            _write_json_atomic(result_path, result)
        yield from ()


class _ChunkAssembler:
    """Collects chunk ``chunk``'s rows (subsets in order, each subset's rows in order), then shuffles them."""

    def __init__(self, run: PrepareRun, plan: Plan, chunk: int) -> None:
        self.run, self.plan, self.chunk = run, plan, chunk
        self.seq_len = plan.seq_len
        self.dtype = np.dtype(run.dtype)
        self._segments: OrderedDict = OrderedDict()  # recent segments: tokens, instances, ends (memory maps)
        self._starts: dict[int, list[int]] = {}

    def write(self) -> dict:
        out = Path(self.run.stage)
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        token_path, piece_path = out / chunk_file(self.chunk), out / pieces_file(self.chunk)
        rows_tmp = token_path.with_name(token_path.name + ".rows.tmp")
        pieces: list[tuple] = []
        subset_rows = {}
        rows = 0
        row = np.empty(self.seq_len, np.uint32)
        with open(rows_tmp, "wb") as handle:
            for s_index, subset in enumerate(self.plan.subsets):
                mine = range((self.chunk - subset.offset) % self.plan.num_chunks, subset.rows, self.plan.num_chunks)
                for i in mine:
                    for piece in self._fill_row(s_index, subset, i, row):
                        pieces.append((rows, *piece))
                    handle.write(row.astype(self.dtype).tobytes())
                    rows += 1
                subset_rows[self.run.config.subsets[s_index].name] = len(mine)
        order = chunk_order_permutation(rows, self.run.config.seed, self.chunk)
        with open(token_path.with_name(token_path.name + ".tmp"), "wb") as f:
            if rows:
                dealt = np.memmap(rows_tmp, dtype=self.dtype, mode="r").reshape(rows, self.seq_len)
                for i in range(0, rows, ROW_BLOCK):
                    f.write(np.ascontiguousarray(dealt[order[i : i + ROW_BLOCK]]).tobytes())
                del dealt
        table = np.array(pieces, dtype=PIECE_DTYPE) if pieces else np.zeros(0, PIECE_DTYPE)
        if rows:
            new_row = np.empty(rows, np.int64)
            new_row[order] = np.arange(rows)
            table["row"] = new_row[table["row"]]
            table = table[np.lexsort((table["pos"], table["row"]))]
        with open(piece_path.with_name(piece_path.name + ".tmp"), "wb") as f:
            np.save(f, table)
        os.replace(token_path.with_name(token_path.name + ".tmp"), token_path)
        os.replace(piece_path.with_name(piece_path.name + ".tmp"), piece_path)
        rows_tmp.unlink()
        result = {"index": self.chunk, "rows": rows, "subset_rows": subset_rows, "sha256": sha256_file(token_path),
                  "pieces_sha256": sha256_file(piece_path)}
        for rel in (chunk_file(self.chunk), pieces_file(self.chunk)):
            publish(out, self.run.out, rel)
        return result

    def _fill_row(self, s_index: int, subset: SubsetPlan, i: int, row: np.ndarray) -> list[tuple]:
        """Copy row ``i`` of the subset into ``row``; returns its pieces (pos, length, subset, source, record,
        pass, fim, offset in the document)."""
        streams = subset.streams
        stream = streams[bisect.bisect_right([s.row_start for s in streams], i) - 1]
        position = (i - stream.row_start) * self.seq_len  # token position in the stream
        segments = stream.segments
        k = bisect.bisect_right(self._token_starts(stream), position) - 1
        fill, pieces = 0, []
        while fill < self.seq_len:
            segment = segments[k]
            inside = position - segment.token_start
            if inside >= segment.tokens:
                k += 1
                continue
            tokens, ends, lengths, starts, records, fims = self._segment(segment)
            n = int(ends.searchsorted(inside, side="right"))
            length = int(lengths[n])
            offset = inside - (int(ends[n]) - length)
            take = min(length - offset, self.seq_len - fill)
            start = int(starts[n]) + offset
            row[fill : fill + take] = tokens[start : start + take]
            pieces.append((fill, take, s_index, self.run.jobs[segment.job].source_index, int(records[n]),
                           segment.repeat_pass, int(fims[n]), offset))
            fill += take
            position += take
        return pieces

    def _token_starts(self, stream: StreamPlan) -> list[int]:
        key = id(stream)
        if key not in self._starts:
            self._starts[key] = [s.token_start for s in stream.segments]
        return self._starts[key]

    def _segment(self, segment: Segment) -> tuple[np.ndarray, ...]:
        """Tokens, instance ends and instance fields of one segment: plain array views of the memory maps (indexing
        a ``np.memmap`` builds a memmap object per element; a view reads the same pages)."""
        key = (segment.job, segment.repeat_pass)
        if key not in self._segments:
            shard = Shard(self.run.jobs[segment.job].out_dir)
            table, ends = shard.pass_instances(segment.repeat_pass)
            table = np.asarray(table)
            self._segments[key] = (np.asarray(shard.tokens()), np.asarray(ends), table["length"],
                                   table["start"], table["record"], table["fim"])
            if len(self._segments) > 4:
                self._segments.popitem(last=False)
        return self._segments[key]


# ---------------------------------------------------------------- stage 4: manifest
class ManifestStep(_PrepareStep):
    """One small task: the manifest (counts, reconciliation, sha256 of every file)."""

    name = "k2hf manifest"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank == 0:
            write_manifest(self.run_spec)
        yield from ()


def write_manifest(run: PrepareRun) -> Manifest:
    """Gather the plan and every chunk's result into ``manifest.json``; remove files it does not list."""
    config, stage = run.config, Path(run.stage)
    plan = Plan.read(run.plan_path)
    results = [json.loads(run.written_path(c).read_text()) for c in range(config.num_chunks)]
    chunks = [
        ChunkEntry(c, chunk_file(c), pieces_file(c), tokens=r["rows"] * config.seq_len, subset_rows=r["subset_rows"],
                   rows=r["rows"], sha256=r["sha256"], pieces_sha256=r["pieces_sha256"])
        for c, r in enumerate(results)
    ]
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        config=config.data_dict(),  # how it ran is left out: the same bytes whatever the executor
        seq_len=config.seq_len,
        dtype=run.dtype,
        num_chunks=config.num_chunks,
        chunk_order=config.resolved_order(),
        total_rows=int(sum(c.rows for c in chunks)),
        subsets=[s.report for s in plan.subsets],
        chunks=chunks,
        tokenizer=TokenizerEntry(**run.tokenizer),
    )
    if manifest.total_rows == 0:
        tokens = ", ".join(f"{s.name} {s.tail_tokens_dropped} tokens from {s.documents_read} documents"
                           for s in manifest.subsets)
        raise RecipeError(f"the mixture yields no row of {config.seq_len} tokens ({tokens}): add documents or "
                              "lower seq_len")
    manifest.write(stage)
    publish(stage, run.out, MANIFEST)  # last: the chunks it lists are in place
    stale = remove_unlisted_remote(run.out, manifest) if is_url(run.out) else remove_unlisted(stage, manifest)
    if stale:
        logger.info("removed %d files of an earlier preparation in %s that the new manifest does not list",
                    len(stale), run.out)
    return manifest


def _write_json_atomic(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


STAGES = (("tokenize", TokenizeStep), ("plan", PlanStep), ("write", WriteChunksStep), ("manifest", ManifestStep))
