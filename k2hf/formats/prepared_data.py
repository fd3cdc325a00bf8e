"""The prepared-data format, shared by every writer (``prepare``, ``import-k2``) and the reader.

A data dir holds ``manifest.json`` (:class:`Manifest`), ``tokenizer/``, and per chunk a flat token file
(``rows x seq_len`` ids, memory-mapped by the trainer) plus a provenance table of every piece of every row
(``PIECE_DTYPE``). :class:`k2hf.pretrain.data.reader.PreparedData` reads a data dir through them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def chunk_file(index: int) -> str:
    return f"chunks/chunk_{index:05d}.bin"


def pieces_file(index: int) -> str:
    return f"chunks/chunk_{index:05d}.pieces.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def chunk_order_permutation(rows: int, seed: int, chunk: int) -> np.ndarray:
    """The shuffle of chunk ``chunk``'s rows: written row ``k`` is dealt row ``permutation[k]``."""
    return np.random.default_rng([seed, 0x5EED, chunk]).permutation(rows)


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _to_dict(obj: Any) -> dict[str, Any]:
    """A manifest dataclass as JSON: fields in order, optional ones (default None) only when set."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [_to_dict(v) for v in value]
        elif dataclasses.is_dataclass(value):
            value = _to_dict(value)
        out[f.name] = value
    return out


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)} (written by a newer k2hf?)")
    return cls(**values)


@dataclass
class ChunkEntry:
    """One chunk of the manifest: its token and provenance files (None: a chunk a partial K2 import left out),
    rows, tokens, rows per subset, and the sha256 of both files."""

    index: int
    file: str | None
    pieces_file: str | None
    tokens: int
    subset_rows: dict[str, int] | None = None
    rows: int = 0
    source_file: str | None = None  # the released file a K2 import read it from
    sha256: str | None = None
    pieces_sha256: str | None = None

    def files(self) -> list[str]:
        return [f for f in (self.file, self.pieces_file) if f]


@dataclass
class SubsetReport:
    """What a subset of the mixture became: its sources and rows; for ``prepare``d data also documents read,
    packed and skipped (with reasons and examples), instances, FIM, tokens and the dropped tail."""

    name: str
    sources: list[str]
    repeat: float | None = None
    fim: bool | None = None
    documents_read: int | None = None
    documents_packed: int | None = None
    documents_skipped: dict[str, int] | None = None
    skip_examples: list[Any] | None = None
    instances_packed: int | None = None
    fim_instances: int | None = None
    rows: int = 0
    tokens: int | None = None
    tail_tokens_dropped: int | None = None


@dataclass
class TokenizerEntry:
    sha256: str  # of its tokenizer.json
    vocab: int
    path: str  # relative to the data dir


@dataclass
class Manifest:
    """``manifest.json``: the data's shape, order, every chunk and subset, the tokenizer, and (``kind:
    k2_release``) the counts of a K2 import. Written last by every writer: a data dir with it is complete."""

    format_version: int
    config: dict[str, Any]  # the recipe that made it
    seq_len: int
    dtype: str
    num_chunks: int
    chunk_order: list[int]
    total_rows: int
    subsets: list[SubsetReport] = field(default_factory=list)
    chunks: list[ChunkEntry] = field(default_factory=list)
    tokenizer: TokenizerEntry | None = None
    kind: str | None = None  # "k2_release" for `k2hf data import-k2`
    chunks_imported: list[int] | None = None
    rows_read: int | None = None
    rows_imported: int | None = None
    rows_skipped: dict[str, int] | None = None
    skip_examples: list[Any] | None = None

    # the order of the keys on disk (the writers' order since format version 1)
    _KEYS = ("format_version", "kind", "config", "seq_len", "dtype", "num_chunks", "chunks_imported", "chunk_order",
             "total_rows", "rows_read", "rows_imported", "rows_skipped", "skip_examples", "subsets", "chunks",
             "tokenizer")

    def to_dict(self) -> dict[str, Any]:
        values = _to_dict(self)
        return {key: values[key] for key in self._KEYS if key in values}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Manifest:
        values = dict(values)
        values["subsets"] = [_from_dict(SubsetReport, s) for s in values.get("subsets", [])]
        values["chunks"] = [_from_dict(ChunkEntry, c) for c in values.get("chunks", [])]
        if values.get("tokenizer") is not None:
            values["tokenizer"] = _from_dict(TokenizerEntry, values["tokenizer"])
        return _from_dict(cls, values)

    @classmethod
    def read(cls, data_dir: str | os.PathLike) -> Manifest:
        return cls.from_dict(json.loads((Path(data_dir) / MANIFEST).read_text()))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def write(self, data_dir: str | os.PathLike) -> Path:
        """Write ``manifest.json`` atomically (a reader never sees half of it)."""
        path = Path(data_dir) / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @property
    def is_k2_release(self) -> bool:
        return self.kind == "k2_release"

    @property
    def vocab(self) -> int:
        return self.tokenizer.vocab

    def subset(self, name: str) -> SubsetReport:
        return next(s for s in self.subsets if s.name == name)

    def report(self, where: str | os.PathLike) -> str:
        """What a person reads after ``prepare`` or ``import-k2`` wrote this manifest into ``where``."""
        if self.is_k2_release:
            skipped = ", ".join(f"{k} {v}" for k, v in (self.rows_skipped or {}).items()) or "none"
            lines = [f"imported {self.rows_imported} of {self.rows_read} rows x {self.seq_len} tokens from "
                     f"{len(self.chunks_imported or [])} chunk(s) (skipped: {skipped}) -> {where}"]
            lines += [f"  {s.name}: {s.rows} rows from {len(s.sources)} source file(s)" for s in self.subsets]
            return "\n".join(lines)
        lines = [f"prepared {self.total_rows} rows x {self.seq_len} tokens in {self.num_chunks} chunks -> {where}"]
        for s in self.subsets:
            skipped = ", ".join(f"{k} {v}" for k, v in (s.documents_skipped or {}).items()) or "none"
            lines.append(f"  {s.name}: {s.documents_read} read, {s.documents_packed} packed, skipped: {skipped}; "
                         f"{s.rows} rows")
        return "\n".join(lines)


def listed_files(manifest: Manifest) -> set[str]:
    """The chunk files a manifest lists (relative paths); beside them a data dir holds only ``manifest.json``,
    its ``tokenizer/`` and the ``.work/`` scratch dir."""
    return {f for info in manifest.chunks for f in info.files()}


def unlisted_files(out: Path, manifest: Manifest) -> list[str]:
    """Files under ``out`` that ``manifest`` does not account for (e.g. left by an earlier, larger preparation)."""
    listed = listed_files(manifest) | {MANIFEST}
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and rel not in listed and not rel.startswith(("tokenizer/", ".work/")):
            found.append(rel)
    return found


def remove_unlisted(out: Path, manifest: Manifest) -> list[str]:
    """Delete what :func:`unlisted_files` finds; returns it."""
    stale = unlisted_files(out, manifest)
    for rel in stale:
        (out / rel).unlink()
    return stale


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://bucket/x``, ``file:///x``) rather than a local path."""
    return "://" in str(path)


def publish(stage: Path, out: str, rel: str) -> None:
    """Move OUT-relative file ``rel`` from the local staging dir to an fsspec output URL (no-op for a local OUT,
    where the staging dir is OUT itself)."""
    if not is_url(out):
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    target = f"{root.rstrip('/')}/{rel}"
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(stage / rel), target)
    (stage / rel).unlink()


def remove_unlisted_remote(out: str, manifest: Manifest) -> list[str]:
    """:func:`remove_unlisted` for an fsspec output URL."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    listed = listed_files(manifest) | {MANIFEST}
    stale = [rel for rel in (p[len(root) + 1 :] for p in fs.find(root)) if rel not in listed
             and not rel.startswith(("tokenizer/", ".work/"))]
    for rel in stale:
        fs.rm_file(f"{root}/{rel}")
    return stale
