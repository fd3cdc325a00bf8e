"""``k2hf data import-k2``: LLM360's released K2 data chunks -> k2hf prepared data, ids and row order kept bit for bit.

The released files (``LLM360/K2Datasets``) are one JSONL per chunk, ``chunk_{i}.jsonl``, one 2048-token training
row per line: ``{"token_ids": [...], "source": s, "subset_name": s, "src_filename": path, "line_idx_in_src": n}``.
Each imported chunk becomes the same memory-mapped token file that ``k2hf data prepare`` writes, plus one
provenance record per row (subset, source shard file, line in that shard), under a manifest with counts and a
sha256 per file and K2's real training order; ``verify`` / ``inspect`` / ``order`` / ``pretrain`` work on it.

Rows stream line by line (memory bounded by one row plus a block of provenance records), locally or from the
Hub through ``huggingface_hub.HfFileSystem`` (what ``datasets`` streams ``hf://`` paths with; read directly so
that every malformed line can be named by file and line, which a JSON dataset builder cannot do).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from k2hf.checkpoints import looks_local
from k2hf.errors import UserError
from k2hf.formats.prepared_data import (
    FORMAT_VERSION,
    PIECE_DTYPE,
    ChunkEntry,
    Manifest,
    SubsetReport,
    TokenizerEntry,
    chunk_file,
    pieces_file,
    remove_unlisted,
    sha256_file,
)
from k2hf.indices import format_index_list
from k2hf.records import READ_REASONS, Rejection, read_records
from k2hf.release import K2_ROW_TOKENS, K2_STAGE1_CHUNKS, k2_chunk_order, released_chunk_file
from k2hf.tokenizer import save_tokenizer

from .prepare import load_tokenizer

KIND = "k2_release"
REQUIRED_FIELDS = ("token_ids", "src_filename", "line_idx_in_src")
SKIP_REASONS = (*READ_REASONS, "missing_field", "wrong_length", "id_out_of_range")
UNKNOWN = -1  # provenance the release does not record (FIM choice, token offset inside the document)

logger = logging.getLogger(__name__)


class ReleaseImportError(UserError):
    """A malformed released row under ``on_error: fail``, or a source that cannot be read."""


@dataclass
class _ChunkStats:
    rows_read: int = 0
    rows_imported: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


class _Provenance:
    """Subset and source-file names, numbered in order of first appearance (deterministic for a given input)."""

    def __init__(self) -> None:
        self.subsets: dict[str, int] = {}
        self.sources: list[dict[str, int]] = []
        self.rows: list[int] = []

    def ids(self, subset: str, source: str) -> tuple[int, int]:
        if subset not in self.subsets:
            self.subsets[subset] = len(self.subsets)
            self.sources.append({})
            self.rows.append(0)
        s = self.subsets[subset]
        files = self.sources[s]
        if source not in files:
            files[source] = len(files)
        self.rows[s] += 1
        return s, files[source]


def check_release(src: str, names: list[str], revision: str | None = None) -> None:
    """Fail before any work when ``src`` lacks one of the chunk files ``names``."""
    local = Path(src)
    if local.is_dir():
        present = {p.name for p in local.glob("chunk_*.jsonl")}
        missing = [n for n in names if not (local / n).is_file()]
        where = str(local)
    elif looks_local(src):
        raise ReleaseImportError(f"{src} is not a directory of chunk_<i>.jsonl files (nor a Hub dataset id)")
    else:
        from huggingface_hub import HfFileSystem

        try:
            present = {Path(p).name for p in HfFileSystem().ls(f"datasets/{src}", detail=False, revision=revision)}
        except FileNotFoundError as error:
            raise ReleaseImportError(f"cannot list the Hub dataset {src}: {str(error).splitlines()[0]}") from None
        missing = [n for n in names if n not in present]
        where = f"the Hub dataset {src}" + (f" at {revision}" if revision else "")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        there = sorted(i for n in present if (i := _chunk_index(n)) is not None and n == released_chunk_file(i))
        hint = f"; it holds chunks {format_index_list(there)}: pick from them with --chunks" if there else ""
        raise ReleaseImportError(f"{shown} not found in {where} (released chunk files are named chunk_<i>.jsonl"
                                 f"{hint})")


def local_chunks(folder: Path, num_chunks: int) -> list[int]:
    """The released chunk files a local folder holds (``chunk_<i>.jsonl``, ``i`` in ``0..num_chunks-1``)."""
    return sorted(i for p in folder.glob("chunk_*.jsonl") if (i := _chunk_index(p.name)) is not None
                  and 0 <= i < num_chunks and p.name == released_chunk_file(i))


def _chunk_index(name: str) -> int | None:
    digits = name.removeprefix("chunk_").removesuffix(".jsonl")
    return int(digits) if digits.isdigit() else None


def open_release(src: str, name: str, revision: str | None = None) -> BinaryIO:
    """A released chunk file from a local dir, or streamed from a Hub dataset repo (``LLM360/K2Datasets``)."""
    if Path(src).is_dir():
        return open(Path(src) / name, "rb")
    from huggingface_hub import HfFileSystem

    return HfFileSystem().open(f"datasets/{src}/{name}", "rb", revision=revision, block_size=8 << 20)


def import_k2(
    src: str,
    out: str | os.PathLike,
    tokenizer: str = "LLM360/K2",
    chunks: list[int] | None = None,
    seq_len: int = K2_ROW_TOKENS,
    num_chunks: int = K2_STAGE1_CHUNKS,
    on_error: str = "fail",
    revision: str | None = None,
    progress: bool = True,
) -> Manifest:
    """Import released chunks ``chunks`` (default: all ``num_chunks``; for a local folder, the chunk files it
    holds) from ``src`` into ``out``; returns the manifest. ``on_error="skip"`` counts malformed rows per reason
    instead of stopping at the first one."""
    if on_error not in ("fail", "skip"):
        raise UserError(f"on_error must be 'fail' or 'skip' (got {on_error!r})")
    if chunks is None and Path(src).is_dir():  # a folder of some released files: those, said so
        chunks = local_chunks(Path(src), num_chunks)
        if not chunks:
            raise ReleaseImportError(f"{src} holds no released chunk file (chunk_<i>.jsonl, i in 0..{num_chunks - 1})")
        if len(chunks) < num_chunks:
            logger.info("importing the %d chunk files found in %s: chunks %s (of %d; --chunks picks others)",
                        len(chunks), src, format_index_list(chunks), num_chunks)
    chunks = sorted(set(range(num_chunks) if chunks is None else chunks))
    bad = [c for c in chunks if not 0 <= c < num_chunks]
    if bad or not chunks:
        raise UserError(f"chunks {bad or '[]'} are not chunks of the release: give indices in 0..{num_chunks - 1}")
    check_release(src, [released_chunk_file(c) for c in chunks], revision)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chunks").mkdir(exist_ok=True)
    tok = load_tokenizer(tokenizer, ".", out / ".work")
    save_tokenizer(tok, out / "tokenizer")
    shutil.rmtree(out / ".work", ignore_errors=True)
    vocab = len(tok)
    dtype = np.dtype(np.uint16) if vocab <= 1 << 16 else np.dtype(np.uint32)
    provenance = _Provenance()
    stats: dict[int, _ChunkStats] = {}
    entries: dict[int, ChunkEntry] = {}
    with tqdm(desc="import K2 rows", unit="row", unit_scale=True, disable=not progress) as bar:
        for chunk in chunks:
            bar.set_postfix(chunk=chunk)
            stats[chunk] = _ChunkStats()
            entries[chunk] = _import_chunk(src, revision, chunk, out, seq_len, vocab, dtype, on_error == "fail",
                                           provenance, stats[chunk], bar)
    manifest = _manifest(src, revision, out, chunks, num_chunks, seq_len, dtype, provenance, stats, entries)
    manifest.tokenizer = TokenizerEntry(sha256_file(out / "tokenizer" / "tokenizer.json"), vocab, "tokenizer")
    manifest.write(out)
    remove_unlisted(out, manifest)  # e.g. chunks of an earlier import into the same folder
    return manifest


def _import_chunk(src: str, revision: str | None, chunk: int, out: Path, seq_len: int, vocab: int, dtype: np.dtype,
                  fail: bool, provenance: _Provenance, stats: _ChunkStats, bar) -> dict:
    name = released_chunk_file(chunk)
    token_path, piece_path = out / chunk_file(chunk), out / pieces_file(chunk)
    block = np.zeros(8192, PIECE_DTYPE)
    filled = 0
    pieces_tmp = piece_path.with_suffix(".tmp")
    with open(token_path.with_suffix(".tmp"), "wb") as tokens, open(pieces_tmp, "wb") as pieces:
        for item in read_records(open_release(src, name, revision), "jsonl", name=name):
            stats.rows_read += 1
            try:
                if isinstance(item, Rejection):
                    raise item
                row = _token_row(item[1], seq_len, vocab)
            except Rejection as error:
                rejection = error if error.source else error.at(name, item[0])
                if fail:
                    raise ReleaseImportError(
                        f"{rejection.message()} (--on-error skip to skip and count such rows)") from None
                stats.skipped[rejection.reason] += 1
                if len(stats.examples) < 5:
                    stats.examples.append(rejection.message())
                bar.update()
                continue
            subset = str(row.get("subset_name", row.get("source", "unknown")))
            s, f = provenance.ids(subset, str(row["src_filename"]))
            tokens.write(row["token_ids"].astype(dtype).tobytes())
            block[filled] = (stats.rows_imported, 0, seq_len, s, f, int(row["line_idx_in_src"]), 0, UNKNOWN, UNKNOWN)
            filled += 1
            stats.rows_imported += 1
            if filled == len(block):
                pieces.write(block.tobytes())
                filled = 0
            bar.update()
        pieces.write(block[:filled].tobytes())
    _npy_from_raw(pieces_tmp, piece_path, PIECE_DTYPE, stats.rows_imported)
    os.replace(token_path.with_suffix(".tmp"), token_path)
    return ChunkEntry(chunk, chunk_file(chunk), pieces_file(chunk), rows=stats.rows_imported,
                      tokens=stats.rows_imported * seq_len, source_file=name, sha256=sha256_file(token_path),
                      pieces_sha256=sha256_file(piece_path))


def _npy_from_raw(raw: Path, out: Path, dtype: np.dtype, count: int, block: int = 1 << 16) -> None:
    """Turn a file of raw records into a ``.npy`` file block by block (memory: one block, whatever the count)."""
    target = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(count,))
    source = np.memmap(raw, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
    for i in range(0, count, block):
        target[i : i + block] = source[i : i + block]
    target.flush()
    del target, source
    raw.unlink()


def _token_row(row: dict, seq_len: int, vocab: int) -> dict:
    """A released row with its ``token_ids`` as an array; raises :class:`Rejection` for one that is not usable."""
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if "subset_name" not in row and "source" not in row:
        missing.append("subset_name")
    if missing:
        raise Rejection("missing_field", ", ".join(missing))
    ids = row["token_ids"]
    if not isinstance(ids, list) or len(ids) != seq_len:
        got = len(ids) if isinstance(ids, list) else type(ids).__name__
        raise Rejection("wrong_length", f"{got} tokens, not {seq_len}")
    array = np.asarray(ids) if ids else np.zeros(0, np.int64)
    if array.dtype.kind not in "iu" or (len(array) and (array.min() < 0 or array.max() >= vocab)):
        first = next(i for i in ids if not (type(i) is int and 0 <= i < vocab))
        raise Rejection("id_out_of_range", f"{first!r} is not an id of the {vocab}-token vocabulary")
    row["token_ids"] = array
    return row


def _manifest(src: str, revision: str | None, out: Path, chunks: list[int], num_chunks: int, seq_len: int,
              dtype: np.dtype, provenance: _Provenance, stats: dict[int, _ChunkStats],
              entries: dict[int, ChunkEntry]) -> Manifest:
    subset_names = sorted(provenance.subsets, key=provenance.subsets.get)
    table = []
    for index in range(num_chunks):
        if index in entries:
            table.append(entries[index])
        else:  # not imported: no file, no rows (training order skips it)
            table.append(ChunkEntry(index, None, None, rows=0, tokens=0))
    for index in chunks:
        path = out / pieces_file(index)
        subsets = np.load(path, mmap_mode="r")["subset"]
        counts = np.bincount(subsets, minlength=len(subset_names)) if len(subsets) else np.zeros(len(subset_names))
        table[index].subset_rows = {name: int(counts[i]) for i, name in enumerate(subset_names)}
    skipped = Counter()
    for s in stats.values():
        skipped.update(s.skipped)
    imported = set(chunks)
    return Manifest(
        format_version=FORMAT_VERSION,
        kind=KIND,
        config={"source": src, "revision": revision, "chunks": chunks, "seq_len": seq_len},
        seq_len=seq_len,
        dtype=dtype.name,
        num_chunks=num_chunks,
        chunks_imported=chunks,
        # K2's real order, restricted to what was imported: ckpt_N of a run on this data is the N-th of these
        chunk_order=[c for c in (k2_chunk_order() if num_chunks == K2_STAGE1_CHUNKS else range(num_chunks))
                     if c in imported],
        total_rows=sum(s.rows_imported for s in stats.values()),
        rows_read=sum(s.rows_read for s in stats.values()),
        rows_imported=sum(s.rows_imported for s in stats.values()),
        rows_skipped=dict(skipped),
        skip_examples=[e for s in stats.values() for e in s.examples][:10],
        subsets=[SubsetReport(name, [*provenance.sources[i]], rows=provenance.rows[i])
                 for i, name in enumerate(subset_names)],
        chunks=table,
    )


__all__ = ["KIND", "SKIP_REASONS", "ReleaseImportError", "check_release", "import_k2", "open_release"]
