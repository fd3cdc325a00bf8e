"""The prepared-data format, shared by every writer (``prepare``, ``import-k2``) and the reader.

A data dir holds ``manifest.json``, ``tokenizer/``, and per chunk a flat token file (``rows x seq_len`` ids,
memory-mapped by the trainer) plus a provenance table of every piece of every row (``PIECE_DTYPE``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


def remove_unlisted_remote(out: str, manifest: dict) -> list[str]:
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
