"""Find anything in the training data: counts, occurrences with their provenance and first checkpoint, next-token
counts and AND/OR queries, over an index built by :mod:`.data_index` (infini-gram's engine underneath).

```python
from k2hf.analysis.search import DataSearch

search = DataSearch("k2-index")                        # its data dir and order come from the index
result = search.search("Hello world", limit=5)         # or token ids: search.search([15043, 3186])
print(result.count, result.first_checkpoint)           # how often, and the first checkpoint that had seen it
for hit in result.occurrences:                         # in training order
    print(hit.chunk, hit.row, hit.offset, hit.first_checkpoint, hit.source)
```

A text query is encoded as a fresh text (no BOS; LLaMA's tokenizer gives its first word a leading space): the
same words in the middle of a row can be other ids, so ``ids=`` queries are exact. A phrase is found only inside
one training row (rows are documents here): a span across two rows is not.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from k2hf.pretrain.data.reader import PreparedData

from .data_index import IndexPlan, SearchError, infini_gram_package, shard_is_built
from .order import ChunkOrder

logger = logging.getLogger(__name__)

MAX_EXACT = 1_000_000  # occurrences located one by one (for the first checkpoint); counts are always exact


@dataclass(frozen=True)
class Source:
    """The source document of an occurrence: subset, source file, 0-based record (line) index in that file."""

    subset: str
    file: str
    record: int


@dataclass(frozen=True)
class Occurrence:
    """One occurrence: ``chunk``, ``row`` of that chunk, token ``offset`` in the row, the first checkpoint that
    had trained on that chunk (1-based; ``None`` when no checkpoint of the order has), and its source."""

    chunk: int
    row: int
    offset: int
    first_checkpoint: int | None
    source: Source | None = None


@dataclass
class SearchResult:
    """A query's count, the first checkpoint that had seen it, and up to ``limit`` occurrences (earliest in
    training first). ``located`` is how many occurrences were located to find the first checkpoint: all of them
    unless there are more than :data:`MAX_EXACT` (then ``first_checkpoint`` is over that many)."""

    query: list[int]
    count: int
    first_checkpoint: int | None
    occurrences: list[Occurrence]
    located: int
    approximate: bool = False
    next_tokens: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"query": self.query, "count": self.count, "approximate": self.approximate,
                "first_checkpoint": self.first_checkpoint, "located": self.located,
                "occurrences": [asdict(o) for o in self.occurrences], "next_tokens": self.next_tokens}


class DataSearch:
    """Queries over a data index. ``data``: the data dir if it moved since indexing (its manifest must be the
    indexed one); ``order``: where first checkpoints come from — a run dir (what the run did, rollbacks
    included), a prepared data dir, or a preset (``k2``); default: the indexed data's planned order.
    ``prefetch_depth``: infini-gram's read-ahead threads per binary search (its default is 3); 0 is ~2.4x faster
    per count on an index the page cache holds (83 vs 199 us median at 108M tokens, BENCHMARKS.md), read-ahead
    pays where the index is on disks slower than memory."""

    def __init__(self, index_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                 order: str | os.PathLike | None = None, tokenizer=None, prefetch_depth: int = 0) -> None:
        self.index_dir = Path(index_dir)
        self.plan = IndexPlan.read(self.index_dir)
        missing = [s.index for s in self.plan.shards if not shard_is_built(self.index_dir, s, self.plan)]
        if missing:
            raise SearchError(f"{self.index_dir} is incomplete: shards {missing} are not built (rerun `k2hf data "
                              "index` with the same arguments to finish it)")
        self.data = PreparedData(data or self.plan.data_dir)
        if self.data.manifest_sha256 != self.plan.data_manifest_sha256:
            raise SearchError(f"{self.index_dir} was built from other data than {self.data.path} (manifest sha256 "
                              f"{self.plan.data_manifest_sha256[:12]}, this data's {self.data.manifest_sha256[:12]}): "
                              "index this data with `k2hf data index`, or point --data at the indexed data")
        self._tokenizer = tokenizer
        self.prefetch_depth = prefetch_depth
        self.order = self._order(order)
        self._doc_tokens = self.plan.seq_len + 1  # a document is the separator and one row
        # the shard and chunk of every document: shard s's documents are its chunks' rows, in order
        self._row_starts = [np.cumsum([0, *s.rows]) for s in self.plan.shards]

    def _order(self, order: str | os.PathLike | None) -> dict[int, int]:
        """chunk -> the first checkpoint that had trained on it."""
        if order is None:
            table = ChunkOrder.of(self.data.path)
        elif Path(order).exists():
            table = ChunkOrder.of(order)
        else:
            table = ChunkOrder.of(preset=str(order))
        first: dict[int, int] = {}
        for entry in table.entries:
            first.setdefault(entry.chunk, entry.checkpoint)
        return first

    @cached_property
    def _first_by_chunk(self) -> np.ndarray:
        """``order`` as an array indexed by chunk (int64 max: no checkpoint has trained on it)."""
        table = np.full(self.data.num_chunks, np.iinfo(np.int64).max, dtype=np.int64)
        for chunk, checkpoint in self.order.items():
            if 0 <= chunk < len(table):
                table[chunk] = checkpoint
        return table

    @cached_property
    def engine(self):
        infini_gram_package()
        from infini_gram.engine import InfiniGramEngine

        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        return InfiniGramEngine(index_dir=[str(self.index_dir / s.dir) for s in self.plan.shards],
                                eos_token_id=int(eos), vocab_size=self.plan.vocab,
                                token_dtype="u16" if self.plan.token_width == 2 else "u32",
                                ds_prefetch_depth=self.prefetch_depth, sa_prefetch_depth=self.prefetch_depth,
                                od_prefetch_depth=self.prefetch_depth)

    @cached_property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else self.data.tokenizer()

    @cached_property
    def _tables(self) -> list[np.ndarray]:
        """Each shard's suffix array as (tokens, bytes per pointer) bytes, memory-mapped."""
        tables = []
        for shard in self.plan.shards:
            path = self.index_dir / shard.dir / "table.0"
            entries = (self.index_dir / shard.dir / "tokenized.0").stat().st_size // self.plan.token_width
            ratio = path.stat().st_size // entries
            tables.append(np.memmap(path, dtype=np.uint8, mode="r", shape=(entries, ratio)))
        return tables

    # ------------------------------------------------------------------ queries
    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SearchError("the query is empty after tokenization")
        return [int(i) for i in ids]

    def _ids(self, query: str | list[int]) -> list[int]:
        ids = self.encode(query) if isinstance(query, str) else [int(i) for i in query]
        if not ids or min(ids) < 0 or max(ids) >= self.plan.vocab:
            raise SearchError(f"query ids must be 0..{self.plan.vocab - 1} and at least one (got {ids[:8]})")
        return ids

    def count(self, query: str | list[int]) -> int:
        """Occurrences of the phrase in the training rows (exact)."""
        return int(self._check(self.engine.count(self._ids(query)))["count"])

    def search(self, query: str | list[int], limit: int = 10, next_tokens: int = 10) -> SearchResult:
        """Count, first checkpoint and the first ``limit`` occurrences in training order; with ``next_tokens``,
        the most frequent tokens that follow the phrase in the data (infini-gram's n-gram distribution)."""
        ids = self._ids(query)
        found = self._check(self.engine.find(ids))
        pointers = []
        for shard, (lo, hi) in enumerate(found["segment_by_shard"]):
            if hi > lo:
                pointers.append((shard, self._pointers(shard, lo, min(hi, lo + MAX_EXACT))))
        result = self._result(ids, int(found["cnt"]), pointers, limit, approximate=False)
        if next_tokens:
            result.next_tokens = self.next_tokens(ids, next_tokens)
        return result

    def search_cnf(self, cnf: list[list[str | list[int]]], limit: int = 10) -> SearchResult:
        """AND of ORs of phrases (``[["a", "b"], ["c"]]`` = (a OR b) AND c) within one row, phrases at most
        infini-gram's ``max_diff_tokens`` (100) tokens apart. Counts past its ``max_clause_freq`` are estimates
        (``approximate``); occurrences are where the rarest clause matched."""
        clauses = [[self._ids(p) for p in clause] for clause in cnf]
        if not clauses or not all(clauses):
            raise SearchError("a CNF query needs at least one phrase in every clause")
        if len(clauses) == 1 and len(clauses[0]) == 1:
            return self.search(clauses[0][0], limit, next_tokens=0)
        found = self._check(self.engine.find_cnf(clauses))
        pointers = [(shard, np.asarray(ptrs, dtype=np.int64)) for shard, ptrs in enumerate(found["ptrs_by_shard"])
                    if len(ptrs)]
        return self._result([], int(found["cnt"]), pointers, limit, approximate=bool(found["approx"]))

    def next_tokens(self, query: str | list[int], k: int = 10) -> list[dict]:
        """The ``k`` most frequent next tokens after the phrase: ``{"id", "token", "count"}``."""
        result = self._check(self.engine.ntd(self._ids(query)))
        ranked = sorted(result["result_by_token_id"].items(), key=lambda kv: (-kv[1]["cont_cnt"], kv[0]))[:k]
        return [{"id": int(t), "token": self.tokenizer.convert_ids_to_tokens(int(t)), "count": int(r["cont_cnt"])}
                for t, r in ranked]

    def first_checkpoint(self, query: str | list[int]) -> int | None:
        return self.search(query, limit=0, next_tokens=0).first_checkpoint

    def maximal_spans(self, ids: list[int], min_len: int, max_count: int) -> list[tuple[int, int]]:
        """``(start, end)`` of every maximal span of ``ids`` found in the rows (at least ``min_len`` tokens, at
        most ``max_count`` occurrences; a span is maximal when it cannot be extended either way and still be
        found): infini-gram's ``attribute``, OLMoTrace's span finder."""
        found = self._check(self.engine.attribute(input_ids=[int(i) for i in ids], delim_ids=[], min_len=min_len,
                                                  max_cnt=max_count, enforce_bow=False))
        return [(int(span["l"]), int(span["r"])) for span in found["spans"]]

    # ------------------------------------------------------------------ locating
    def _pointers(self, shard: int, lo: int, hi: int) -> np.ndarray:
        """Byte positions (in the shard's ``tokenized.0``) of suffix-array ranks ``lo..hi``."""
        raw = np.asarray(self._tables[shard][lo:hi], dtype=np.int64)
        return (raw << (8 * np.arange(raw.shape[1], dtype=np.int64))).sum(axis=1)

    def locate(self, shard: int, pointers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chunk, row, token offset in the row) of byte positions in shard ``shard``."""
        width = self.plan.token_width
        doc, within = np.divmod(pointers // width, self._doc_tokens)
        plan = self.plan.shards[shard]
        which = np.searchsorted(self._row_starts[shard], doc, side="right") - 1
        chunks = np.asarray(plan.chunks)[which]
        return chunks, doc - self._row_starts[shard][which], within - 1

    def _result(self, ids: list[int], count: int, pointers: list[tuple[int, np.ndarray]], limit: int,
                approximate: bool) -> SearchResult:
        located = [self.locate(shard, ptrs) for shard, ptrs in pointers]
        if located:
            chunks, rows, offsets = (np.concatenate(parts) for parts in zip(*located))
        else:
            chunks = rows = offsets = np.zeros(0, np.int64)
        never = np.iinfo(np.int64).max
        first = self._first_by_chunk[chunks]
        ranked = np.lexsort((offsets, rows, chunks, first))[:limit]
        occurrences = [Occurrence(int(chunks[i]), int(rows[i]), int(offsets[i]),
                                  None if first[i] == never else int(first[i]),
                                  self.source(int(chunks[i]), int(rows[i]), int(offsets[i])))
                       for i in ranked]
        earliest = int(first.min()) if len(first) and first.min() != never else None
        return SearchResult(ids, count, earliest, occurrences, located=len(chunks), approximate=approximate)

    def source(self, chunk: int, row: int, offset: int) -> Source | None:
        """The source document of the row's piece holding token ``offset`` (None without provenance)."""
        pieces = self.data.chunk(chunk).pieces_of(row)
        inside = pieces[(pieces["pos"] <= offset) & (offset < pieces["pos"] + pieces["length"])]
        if not len(inside):
            return None
        piece = inside[0]
        subset = self.data.manifest.subsets[int(piece["subset"])]
        return Source(subset.name, subset.sources[int(piece["source"])], int(piece["record"]))

    def row_text(self, chunk: int, row: int, start: int = 0, end: int | None = None) -> str:
        return self.tokenizer.decode(self.data.chunk(chunk).row(row)[start:end])

    @staticmethod
    def _check(response: dict) -> dict:
        if "error" in response:
            raise SearchError(f"infini-gram: {response['error']}")
        return response


def parse_cnf(text: str) -> list[list[str]]:
    """infini-gram's query syntax: ``a AND b OR c`` = a AND (b OR c) (AND binds weaker, as on its web page)."""
    return [[phrase.strip() for phrase in clause.split(" OR ")] for clause in text.split(" AND ")]


def is_cnf(text: str) -> bool:
    return " AND " in text or " OR " in text


def result_text(result: SearchResult, search: DataSearch, context: int = 8) -> str:
    """What ``k2hf data search`` prints: count, first checkpoint, each occurrence with its context, next tokens."""
    first = f"ckpt_{result.first_checkpoint:03d}" if result.first_checkpoint else "none in the order"
    lines = [f"{result.count:,} occurrence(s){' (approximate)' if result.approximate else ''}; first checkpoint "
             f"that had seen it: {first}"]
    span = max(len(result.query), 1)
    for hit in result.occurrences:
        where = f"{hit.source.subset} {hit.source.file} record {hit.source.record}" if hit.source else "no provenance"
        ckpt = f"ckpt_{hit.first_checkpoint:03d}" if hit.first_checkpoint else "not trained yet"
        before = search.row_text(hit.chunk, hit.row, max(0, hit.offset - context), hit.offset)
        match = search.row_text(hit.chunk, hit.row, hit.offset, hit.offset + span)
        after = search.row_text(hit.chunk, hit.row, hit.offset + span, hit.offset + span + context)
        lines.append(f"  chunk {hit.chunk} row {hit.row} token {hit.offset} ({ckpt}; {where})")
        lines.append(f"    ...{before}[{match}]{after}..." if result.query else "")
    if result.next_tokens:
        lines.append("next tokens: " + ", ".join(f"{t['token']!r} {t['count']}" for t in result.next_tokens))
    return "\n".join(line for line in lines if line)


__all__ = ["DataSearch", "Occurrence", "SearchResult", "Source", "is_cnf", "parse_cnf", "result_text"]
