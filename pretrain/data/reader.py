"""Read prepared data: O(1) row access (memory-mapped), provenance, chunk order, verification."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from k2hf.errors import UserError
from k2hf.formats.prepared_data import MANIFEST, Manifest, sha256_file, unlisted_files


class DataIndexError(UserError, IndexError):
    """A chunk, row or checkpoint index outside the prepared data."""


class NotPreparedDataError(UserError, FileNotFoundError):
    """A folder without a prepared-data manifest."""


class DataCheckError(UserError):
    """Prepared data a run cannot read as its manifest describes (a missing or damaged chunk, ids too large)."""


@dataclass
class Chunk:
    """One chunk: ``tokens[row]`` is a ``seq_len`` row; ``pieces_of(row)`` says where each part came from."""

    index: int
    tokens: np.ndarray  # memmap, shape (rows, seq_len)
    pieces_path: Path | None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` as int64 ids (a constant-time slice of the memory map)."""
        if not 0 <= i < len(self):
            raise DataIndexError(f"chunk {self.index} has {len(self)} rows (0..{len(self) - 1}); "
                                 f"row {i} does not exist")
        return self.tokens[i].astype(np.int64)

    @cached_property
    def pieces(self) -> np.ndarray:
        return np.load(self.pieces_path, mmap_mode="r")

    def pieces_of(self, i: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.pieces["row"], [i, i + 1])
        return np.asarray(self.pieces[lo:hi])


class PreparedData:
    """A directory written by ``k2hf data prepare``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise NotPreparedDataError(f"{self.path} has no {MANIFEST}: not prepared data (run `k2hf data prepare` "
                                       "or `k2hf data import-k2` first)")
        text = manifest.read_bytes()
        self.manifest = Manifest.from_dict(json.loads(text))
        # The data's identity: a checkpoint records it, and a resume onto other data is refused.
        self.manifest_sha256: str = hashlib.sha256(text).hexdigest()
        self.seq_len: int = self.manifest.seq_len
        self.dtype = np.dtype(self.manifest.dtype)
        self.chunk_order: list[int] = self.manifest.chunk_order

    @property
    def num_chunks(self) -> int:
        return self.manifest.num_chunks

    def rows(self, chunk: int) -> int:
        """Rows of chunk ``chunk``."""
        return self.manifest.chunks[chunk].rows

    def chunk(self, index: int) -> Chunk:
        if not 0 <= index < self.num_chunks:
            raise DataIndexError(f"chunk {index} does not exist: {self.path} has chunks 0..{self.num_chunks - 1}")
        info = self.manifest.chunks[index]
        if info.rows:
            tokens = np.memmap(self.path / info.file, dtype=self.dtype, mode="r", shape=(info.rows, self.seq_len))
        else:  # an empty chunk, or one a partial K2 import left out
            tokens = np.zeros((0, self.seq_len), self.dtype)
        return Chunk(index, tokens, self.path / info.pieces_file if info.pieces_file else None)

    def check_readable(self, chunks: list[int]) -> None:
        """Before a run reads anything, in O(chunks): every chunk file it will read exists with the size its
        manifest gives, and the data's dtype holds every id of its tokenizer (the trainer checks the model's
        embedding rows against the same tokenizer size). Raises :class:`DataCheckError` naming what is wrong."""
        vocab = self.manifest.vocab
        if vocab > np.iinfo(self.dtype).max + 1:
            raise DataCheckError(f"{self.path}: dtype {self.dtype} cannot hold the tokenizer's {vocab} ids")
        for index in chunks:
            info = self.manifest.chunks[index]
            if not info.rows:
                continue
            path = self.path / info.file
            expected = info.rows * self.seq_len * self.dtype.itemsize
            if not path.is_file():
                raise DataCheckError(f"chunk {index}: {path} is missing (re-run `k2hf data prepare`)")
            if path.stat().st_size != expected:
                raise DataCheckError(f"chunk {index}: {path} has {path.stat().st_size} bytes, its manifest says "
                                     f"{expected} ({info.rows} rows x {self.seq_len} x {self.dtype.itemsize}): "
                                     "damaged or from another preparation (re-run `k2hf data prepare`)")

    def read_rows(self, chunk: int, rows: np.ndarray) -> np.ndarray:
        """Token rows ``rows`` of chunk ``chunk``; a read error names the chunk, its file and the rows."""
        try:
            return np.asarray(self.chunk(chunk).tokens[rows])
        except (OSError, ValueError, IndexError) as error:
            file = self.manifest.chunks[chunk].file
            raise DataCheckError(f"reading rows {list(map(int, rows))[:8]} of chunk {chunk} ({self.path / file}) "
                                 f"failed: {error}") from error

    def chunk_for_checkpoint(self, checkpoint: int) -> int:
        """The chunk that checkpoint ``checkpoint`` (1-based, like ``ckpt_001``) was trained on."""
        if not 1 <= checkpoint <= len(self.chunk_order):
            raise DataIndexError(f"checkpoints are 1..{len(self.chunk_order)}; got {checkpoint}")
        return self.chunk_order[checkpoint - 1]

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path / self.manifest.tokenizer.path)

    def describe_row(self, chunk: int, row: int) -> list[dict]:
        """Where every piece of a row came from: subset, source file, record (line) index, token span (``None``
        where the data does not record it, e.g. the FIM choice and document offset of imported K2 rows)."""
        subsets = self.manifest.subsets
        return [
            {
                "position": [int(p["pos"]), int(p["pos"] + p["length"])],
                "subset": subsets[p["subset"]].name,
                "source": subsets[p["subset"]].sources[p["source"]],
                "record": int(p["record"]),
                "repeat_pass": int(p["pass"]),
                "fim": ("none", "PSM", "SPM")[int(p["fim"])] if p["fim"] >= 0 else None,
                "document_tokens": [int(p["offset"]), int(p["offset"] + p["length"])] if p["offset"] >= 0 else None,
            }
            for p in self.chunk(chunk).pieces_of(row)
        ]

    def describe_row_text(self, chunk: int, row: int) -> str:
        """A row decoded piece by piece, each under a line saying where it came from (``k2hf data inspect``)."""
        ids = self.chunk(chunk).row(row)
        tokenizer = self.tokenizer()
        lines = [f"chunk {chunk} row {row} ({len(ids)} tokens)"]
        for piece in self.describe_row(chunk, row):
            a, b = piece["position"]
            known = ", ".join(f"{label} {piece[key]}" for key, label in (
                ("repeat_pass", "pass"), ("fim", "fim"), ("document_tokens", "document tokens"))
                if piece[key] is not None)
            lines.append(f"--- [{a}:{b}] {piece['subset']} {piece['source']} "
                         f"{_where(piece['source'], piece['record'])} ({known})")
            lines.append(tokenizer.decode(ids[a:b]))
        return "\n".join(lines)

    def verify(self) -> list[str]:
        """Re-hash every file and re-check every count; returns the problems found (empty = verified)."""
        problems = []
        itemsize = self.dtype.itemsize
        m = self.manifest
        for info in m.chunks:
            if info.file is None:  # a chunk not imported (partial K2 import)
                continue
            path = self.path / info.file
            if not path.is_file():
                problems.append(f"{info.file}: missing")
                continue
            if path.stat().st_size != info.rows * self.seq_len * itemsize:
                problems.append(f"{info.file}: size {path.stat().st_size} != rows x seq_len x {itemsize}")
            if sha256_file(path) != info.sha256:
                problems.append(f"{info.file}: sha256 mismatch")
            if sha256_file(self.path / info.pieces_file) != info.pieces_sha256:
                problems.append(f"{info.pieces_file}: sha256 mismatch")
        if m.is_k2_release:
            accounted = m.rows_imported + sum(m.rows_skipped.values())
            if accounted != m.rows_read:
                problems.append(f"rows read {m.rows_read} != imported + skipped ({accounted})")
            if sum(c.rows for c in m.chunks) != m.rows_imported:
                problems.append(f"chunks hold {sum(c.rows for c in m.chunks)} rows, manifest says "
                                f"{m.rows_imported} imported")
        for subset in m.subsets:
            if subset.documents_read is not None:
                accounted = subset.documents_packed + sum(subset.documents_skipped.values())
                if accounted != subset.documents_read:
                    problems.append(f"subset {subset.name}: read {subset.documents_read} != packed + skipped "
                                    f"({accounted})")
            rows = sum((c.subset_rows or {}).get(subset.name, 0) for c in m.chunks)
            if rows != subset.rows:
                problems.append(f"subset {subset.name}: chunks hold {rows} rows, manifest says {subset.rows}")
        problems += [f"{rel}: not listed in the manifest (left by another preparation? remove it)"
                     for rel in unlisted_files(self.path, m)]
        token_path = self.path / m.tokenizer.path / "tokenizer.json"
        if sha256_file(token_path) != m.tokenizer.sha256:
            problems.append("tokenizer.json: sha256 mismatch")
        return problems


def _where(source: str, record: int) -> str:
    """Positions shown to people are 1-based, like editors' line numbers: ``line 81`` of a text/JSONL file (the
    stored, 0-based record index 80), ``record 81`` of any other source."""
    unit = "line" if source.endswith((".jsonl", ".json", ".txt")) else "record"
    return f"{unit} {record + 1}"
