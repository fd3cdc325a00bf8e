"""Read prepared data: O(1) row access (memory-mapped), provenance, chunk order, verification."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .prepare import MANIFEST, sha256_file


@dataclass
class Chunk:
    """One chunk: ``tokens[row]`` is a ``seq_len`` row; ``pieces_of(row)`` says where each part came from."""

    index: int
    tokens: np.ndarray  # memmap, shape (rows, seq_len)
    pieces_path: Path

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` as int64 ids (a constant-time slice of the memory map)."""
        if not 0 <= i < len(self):
            raise IndexError(f"chunk {self.index} has {len(self)} rows; row {i} does not exist")
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
            raise FileNotFoundError(f"{self.path} has no {MANIFEST}: run `k2hf data prepare` first")
        self.manifest = json.loads(manifest.read_text())
        self.seq_len: int = self.manifest["seq_len"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.chunk_order: list[int] = self.manifest["chunk_order"]

    @property
    def num_chunks(self) -> int:
        return self.manifest["num_chunks"]

    def chunk(self, index: int) -> Chunk:
        info = self.manifest["chunks"][index]
        path = self.path / info["file"]
        if info["rows"]:
            tokens = np.memmap(path, dtype=self.dtype, mode="r", shape=(info["rows"], self.seq_len))
        else:
            tokens = np.zeros((0, self.seq_len), self.dtype)
        return Chunk(index, tokens, self.path / info["pieces_file"])

    def chunk_for_checkpoint(self, checkpoint: int) -> int:
        """The chunk that checkpoint ``checkpoint`` (1-based, like ``ckpt_001``) was trained on."""
        if not 1 <= checkpoint <= len(self.chunk_order):
            raise IndexError(f"checkpoints are 1..{len(self.chunk_order)}; got {checkpoint}")
        return self.chunk_order[checkpoint - 1]

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path / self.manifest["tokenizer"]["path"])

    def describe_row(self, chunk: int, row: int) -> list[dict]:
        """Where every piece of a row came from: subset, source file, record (line) index, token span."""
        subsets = self.manifest["subsets"]
        return [
            {
                "position": [int(p["pos"]), int(p["pos"] + p["length"])],
                "subset": subsets[p["subset"]]["name"],
                "source": subsets[p["subset"]]["sources"][p["source"]],
                "record": int(p["record"]),
                "repeat_pass": int(p["pass"]),
                "fim": ("none", "PSM", "SPM")[int(p["fim"])],
                "document_tokens": [int(p["offset"]), int(p["offset"] + p["length"])],
            }
            for p in self.chunk(chunk).pieces_of(row)
        ]

    def verify(self) -> list[str]:
        """Re-hash every file and re-check every count; returns the problems found (empty = verified)."""
        problems = []
        itemsize = self.dtype.itemsize
        for info in self.manifest["chunks"]:
            path = self.path / info["file"]
            if not path.is_file():
                problems.append(f"{info['file']}: missing")
                continue
            if path.stat().st_size != info["rows"] * self.seq_len * itemsize:
                problems.append(f"{info['file']}: size {path.stat().st_size} != rows x seq_len x {itemsize}")
            if sha256_file(path) != info["sha256"]:
                problems.append(f"{info['file']}: sha256 mismatch")
            if sha256_file(self.path / info["pieces_file"]) != info["pieces_sha256"]:
                problems.append(f"{info['pieces_file']}: sha256 mismatch")
        for subset in self.manifest["subsets"]:
            accounted = subset["documents_packed"] + sum(subset["documents_skipped"].values())
            if accounted != subset["documents_read"]:
                problems.append(f"subset {subset['name']}: read {subset['documents_read']} != packed + skipped "
                                f"({accounted})")
            rows = sum(c["subset_rows"][subset["name"]] for c in self.manifest["chunks"])
            if rows != subset["rows"]:
                problems.append(f"subset {subset['name']}: chunks hold {rows} rows, manifest says {subset['rows']}")
        token_path = self.path / self.manifest["tokenizer"]["path"] / "tokenizer.json"
        if sha256_file(token_path) != self.manifest["tokenizer"]["sha256"]:
            problems.append("tokenizer.json: sha256 mismatch")
        return problems
