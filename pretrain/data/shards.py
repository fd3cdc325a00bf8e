"""Tokenize one source (a file, or a streamed Hub dataset) of one subset into an on-disk shard.

A shard holds the source's token ids once per distinct rendering and a table of *document instances*: one per
(document, repeat pass) kept by the repeat factor, pointing at its tokens. Plain documents repeated k times
share their tokens; each FIM instance gets its own. Shards are written to a temp dir and renamed into place, so
an interrupted ``prepare`` keeps every finished shard and redoes only the rest.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from k2hf.errors import UserError
from k2hf.records import Rejection
from k2hf.token_layouts import EOS_ID, EOS_TOKEN
from k2hf.tokenizer import PlainTextEncoder

from .config import SubsetConfig
from .fim import NO_FIM, FimTokenIds, assemble, fim_decisions, split_text
from .k2_release import EOS_STRING, SPECIAL_STRINGS, encode_file
from .sources import read_source

INSTANCE_DTYPE = np.dtype([("record", "<i8"), ("pass", "<i4"), ("fim", "i1"), ("start", "<i8"), ("length", "<i8")])
ENCODE_BATCH = 1024
BLOCK_RECORDS = 8192  # records tokenized at a time: bounds a worker's memory whatever the file size
SHARD_FORMAT = 2  # 2: per-pass instance ends (ends.npy) and per-pass counts in meta.json


class BadInputError(UserError):
    """A bad record under ``on_error: fail``: names the file and line."""


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to build one shard (picklable)."""

    subset: SubsetConfig
    subset_index: int
    source_index: int
    source: str
    out_dir: str
    tokenizer_json: str
    sp_model: str | None  # SentencePiece model of the tokenizer (faster bulk encoding, same ids)
    eos_id: int
    fim_ids: tuple[int, int, int]
    fim_rate: float
    spm_rate: float
    seed: int
    fail_on_error: bool
    fingerprint: str
    tokenization: str = "default"  # or "k2_release" (see .k2_release)


@functools.lru_cache(maxsize=2)
def _encoder(tokenizer_json: str, sp_model: str | None) -> PlainTextEncoder:
    """One encoder per worker process, not per shard: building one (parsing the tokenizer, checking SentencePiece
    against it) costs ~0.3 s, a tenth of tokenizing a 12 MB file."""
    return PlainTextEncoder(Tokenizer.from_str(tokenizer_json), sp_model)


class Shard:
    """A tokenized shard on disk (the one owner of its layout): ``tokens.bin`` (every instance's uint32 ids,
    back to back), ``instances.npy`` (one ``INSTANCE_DTYPE`` record per document instance, pass-major),
    ``ends.npy`` (where each instance's tokens end within its pass) and ``meta.json`` (stats and counts per
    pass, and the job's fingerprint: a shard of other inputs is rebuilt)."""

    TOKENS, INSTANCES, ENDS, META = "tokens.bin", "instances.npy", "ends.npy", "meta.json"

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.dir = Path(out_dir)
        self._meta: dict | None = None

    def is_done(self, fingerprint: str) -> bool:
        """Written completely, by a job with this fingerprint."""
        path = self.dir / self.META
        return path.is_file() and json.loads(path.read_text()).get("fingerprint") == fingerprint

    @property
    def meta(self) -> dict:
        """The shard's stats: records read, tokens, skips, and ``passes`` (instances, tokens, FIM per pass)."""
        if self._meta is None:
            self._meta = json.loads((self.dir / self.META).read_text())
        return self._meta

    def tokens(self) -> np.ndarray:
        """Every token id (memory-mapped)."""
        path = self.dir / self.TOKENS
        return np.memmap(path, dtype=np.uint32, mode="r") if path.stat().st_size else np.zeros(0, np.uint32)

    def instances(self, mmap: bool = False) -> np.ndarray:
        return np.load(self.dir / self.INSTANCES, mmap_mode="r" if mmap else None)

    def pass_instances(self, repeat_pass: int) -> tuple[np.ndarray, np.ndarray]:
        """The document instances of one repeat pass in packing order, and where each one's tokens end within the
        pass (both memory-mapped: a lookup reads only the pages it needs)."""
        passes = self.meta["passes"]
        lo = sum(p["instances"] for p in passes[:repeat_pass])
        hi = lo + passes[repeat_pass]["instances"]
        ends = np.load(self.dir / self.ENDS, mmap_mode="r")
        return self.instances(mmap=True)[lo:hi], ends[lo:hi]

    @classmethod
    def write(cls, tmp: Path, instances: np.ndarray, stats: dict) -> None:
        """The tables and stats beside a ``tokens.bin`` already written into ``tmp`` (renamed into place after)."""
        np.save(tmp / cls.INSTANCES, instances)
        np.save(tmp / cls.ENDS, pass_ends(instances))
        (tmp / cls.META).write_text(json.dumps(stats))


def shard_is_done(job: ShardJob) -> bool:
    return Shard(job.out_dir).is_done(job.fingerprint)


def build_shard(job: ShardJob) -> dict:
    """Tokenize ``job.source`` into ``job.out_dir``, streaming in blocks; returns the shard's stats."""
    # text is untrusted: "<fim_prefix>" in data stays plain text
    encoder = _encoder(job.tokenizer_json, job.sp_model) if job.tokenization == "default" else None
    out_dir = Path(job.out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = _ShardState(job, encoder)
    with open(tmp / Shard.TOKENS, "wb") as token_file:
        state.token_file = token_file
        if job.tokenization == "k2_release":
            state.add_release_file(read_source(job.subset, job.source))
        else:
            state.add_documents(read_source(job.subset, job.source))
    instances = np.concatenate(state.tables) if state.tables else np.zeros(0, INSTANCE_DTYPE)
    instances = instances[np.lexsort((instances["record"], instances["pass"]))]  # pass-major, then record order
    stats = state.stats(instances)
    Shard.write(tmp, instances, stats)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return stats


class _ShardState:
    """Accumulates one shard: tokens go straight to disk, instance tables stay in memory (40 bytes each)."""

    def __init__(self, job: ShardJob, encoder: PlainTextEncoder | None) -> None:
        self.job, self.encoder = job, encoder
        self.fim_ids = FimTokenIds(*job.fim_ids)
        self.token_file = None
        self.total = 0
        self.good = 0
        self.first_pass_kept = 0
        self.blocks = 0
        self.bad: Counter = Counter()
        self.examples: list[str] = []
        self.tables: list[np.ndarray] = []

    def bad_record(self, item: Rejection) -> None:
        if self.job.fail_on_error:
            raise BadInputError(f"{item.message()} (set `on_error: skip` / --on-error skip to skip and count)")
        self.bad[item.reason] += 1
        if len(self.examples) < 5:
            self.examples.append(item.message())

    def _append(self, ids: list[int]) -> int:
        start = self.total
        array = np.asarray(ids, dtype=np.uint32)
        self.token_file.write(array.tobytes())
        self.total += len(array)
        return start

    def add_documents(self, items) -> None:
        """Default tokenization: each document on its own, a block of records at a time (bounded memory)."""
        block: list[tuple[int, str]] = []
        for item in items:
            if isinstance(item, Rejection):
                self.bad_record(item)
                continue
            block.append(item)
            if len(block) == BLOCK_RECORDS:
                self.add_block(block)
                block = []
        if block:
            self.add_block(block)

    def add_block(self, block: list[tuple[int, str]]) -> None:
        job = self.job
        records = np.fromiter((r for r, _ in block), dtype=np.int64, count=len(block))
        texts = [t for _, t in block]
        starts = np.empty(len(block), np.int64)
        lengths = np.empty(len(block), np.int64)
        for i, ids in enumerate(_encode(self.encoder, texts)):
            starts[i] = self._append(ids + [job.eos_id])
            lengths[i] = len(ids) + 1
        for repeat_pass in range(math.ceil(job.subset.repeat)):
            keep = np.flatnonzero(self._included(repeat_pass, len(block)))
            modes = np.zeros(len(keep), dtype=np.int8)
            inst_starts, inst_lengths = starts[keep], lengths[keep]
            if job.subset.fim and len(keep):
                modes, cuts = fim_decisions(self._rng(1, repeat_pass), len(keep), job.fim_rate, job.spm_rate)
                chosen = np.flatnonzero(modes != NO_FIM)
                parts = [split_text(texts[keep[i]], cuts[i]) for i in chosen]
                encoded = _encode(self.encoder, [p for triple in parts for p in triple])
                for j, i in enumerate(chosen):
                    ids = assemble(int(modes[i]), *encoded[3 * j : 3 * j + 3], self.fim_ids) + [job.eos_id]
                    inst_starts[i], inst_lengths[i] = self._append(ids), len(ids)
            table = np.empty(len(keep), dtype=INSTANCE_DTYPE)
            table["record"], table["pass"], table["fim"] = records[keep], repeat_pass, modes
            table["start"], table["length"] = inst_starts, inst_lengths
            self.tables.append(table)
            if repeat_pass == 0:
                self.first_pass_kept += len(keep)
        self.good += len(block)
        self.blocks += 1

    def add_release_file(self, items) -> None:
        """``tokenization: k2_release``: the whole file as one id stream (windows cross documents); each document
        owns the contiguous span of its pieces, its ``</s>`` included."""
        tokenizer = Tokenizer.from_str(self.job.tokenizer_json)
        tokenizer.encode_special_tokens = True  # K2's own tokenizer had no chat/tool tokens: their strings are text
        special_ids = {s: tokenizer.token_to_id(s) for s in SPECIAL_STRINGS}
        if special_ids[EOS_STRING] is None and tokenizer.token_to_id(EOS_TOKEN) == EOS_ID:
            special_ids[EOS_STRING] = EOS_ID  # the released K2 tokenizers call id 2 <|endoftext|>; the release
            # code cut at the string </s>, id 2 in the LLaMA tokenizer it used
        missing = [s for s, i in special_ids.items() if i is None]
        if missing:
            raise BadInputError(f"tokenization k2_release needs the tokens {missing} in the tokenizer")

        def good():
            for item in items:
                if isinstance(item, Rejection):
                    self.bad_record(item)
                    continue
                self.good += 1
                yield item

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

        spans: dict[int, list[int]] = {}
        for ids, record in encode_file(good(), encode_batch, special_ids):
            start = self._append(ids)
            if record in spans:
                spans[record][1] += len(ids)
            else:
                spans[record] = [start, len(ids)]
        records = np.fromiter(spans, dtype=np.int64, count=len(spans))
        starts = np.array([v[0] for v in spans.values()], dtype=np.int64)
        lengths = np.array([v[1] for v in spans.values()], dtype=np.int64)
        for repeat_pass in range(math.ceil(self.job.subset.repeat)):
            keep = np.flatnonzero(self._included(repeat_pass, len(records)))
            table = np.zeros(len(keep), dtype=INSTANCE_DTYPE)
            table["record"], table["pass"] = records[keep], repeat_pass
            table["start"], table["length"] = starts[keep], lengths[keep]
            self.tables.append(table)
            if repeat_pass == 0:
                self.first_pass_kept += len(keep)

    def _rng(self, purpose: int, repeat_pass: int) -> np.random.Generator:
        job = self.job
        return np.random.default_rng([job.seed, job.subset_index, job.source_index, purpose, repeat_pass, self.blocks])

    def _included(self, repeat_pass: int, n: int) -> np.ndarray:
        """All records for whole passes; a deterministic fraction for the last, fractional pass."""
        fraction = self.job.subset.repeat - repeat_pass
        if fraction >= 1:
            return np.ones(n, dtype=bool)
        return self._rng(0, repeat_pass).random(n) < fraction

    def stats(self, instances: np.ndarray) -> dict:
        passes = [instances[instances["pass"] == p] for p in range(math.ceil(self.job.subset.repeat))]
        return {
            "fingerprint": self.job.fingerprint,
            "source": self.job.source,
            "records_read": self.good + sum(self.bad.values()),
            "records_good": self.good,
            "skipped": dict(self.bad),
            "skip_examples": self.examples,
            "tokens": self.total,
            "instances": len(instances),
            # per repeat pass: what the planning stage needs without reading the instance table
            "passes": [{"instances": len(t), "tokens": int(t["length"].sum()), "fim": int(np.count_nonzero(t["fim"]))}
                       for t in passes],
            # records no pass keeps (repeat < 1): counted as skipped "not_sampled"
            "not_sampled": self.good - self.first_pass_kept if self.job.subset.repeat < 1 else 0,
        }


def pass_ends(instances: np.ndarray) -> np.ndarray:
    """For each instance (sorted pass-major), where its tokens end within its pass: a row's instances are found
    by binary search on this memory-mapped array, without reading the whole table."""
    ends = np.cumsum(instances["length"], dtype=np.int64)
    starts = np.searchsorted(instances["pass"], instances["pass"], side="left")  # first instance of each one's pass
    before = np.concatenate([[0], ends])[starts]
    return ends - before


def _encode(encoder: PlainTextEncoder, texts: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), ENCODE_BATCH):
        out.extend(encoder(texts[i : i + ENCODE_BATCH]))
    return out


def load_shard(out_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tokens (memory-mapped), instance table and stats of a finished shard."""
    shard = Shard(out_dir)
    return shard.tokens(), shard.instances(), shard.meta
