"""Read documents from local JSONL / Parquet / text files or a streamed Hub dataset, accounting for every one.

Each source yields ``(record_index, text)`` for good documents and :class:`BadRecord` for bad ones; the caller
decides (``on_error``) whether a bad record stops the run or is counted and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .config import SubsetConfig, file_format
from .format import is_url

SKIP_REASONS = ("malformed_json", "missing_text_field", "non_utf8", "empty_document", "unreadable_file")


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot become a document, with where it is and why."""

    source: str
    record: int  # 0-based record index (line index for JSONL); -1 for a whole unreadable file
    reason: str
    detail: str = ""

    def message(self) -> str:
        line = f" line {self.record + 1}" if self.record >= 0 else ""
        return f"{self.source}{line}: {self.reason.replace('_', ' ')}{': ' + self.detail if self.detail else ''}"


Record = tuple[int, str] | BadRecord


def _check_text(source: str, index: int, value: Any, field: str) -> Record:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"not a string ({type(value).__name__})"
        return BadRecord(source, index, "missing_text_field", f"field {field!r} {kind}")
    if not value.strip():
        return BadRecord(source, index, "empty_document")
    return index, value


def open_source(path: str):
    """A local path, or any fsspec URL (``s3://``, ``gs://``, ``hf://``, ``https://`` ...), opened for binary
    reading."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def read_jsonl(path: str, field: str) -> Iterator[Record]:
    """One JSON object per line; blank lines count as records (empty documents)."""
    try:
        handle = open_source(path)
    except OSError as error:
        yield BadRecord(path, -1, "unreadable_file", str(error))
        return
    with handle:
        for index, raw in enumerate(handle):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield BadRecord(path, index, "non_utf8", str(error))
                continue
            if not line.strip():
                yield BadRecord(path, index, "empty_document", "blank line")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                yield BadRecord(path, index, "malformed_json", str(error))
                continue
            value = obj.get(field) if isinstance(obj, dict) else None
            yield _check_text(path, index, value, field)


def read_parquet(path: str, field: str, batch_size: int = 4096) -> Iterator[Record]:
    """Rows of a Parquet file, read in record batches (bounded memory)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(open_source(path))
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        yield BadRecord(path, -1, "unreadable_file", str(error))
        return
    if field not in parquet.schema_arrow.names:
        for index in range(parquet.metadata.num_rows):
            yield BadRecord(path, index, "missing_text_field", f"no column {field!r}")
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[field]):
        for value in batch.column(0).to_pylist():
            yield _check_text(path, index, value, field)
            index += 1


def read_text(path: str) -> Iterator[Record]:
    """A plain-text file is one document."""
    try:
        with open_source(path) as handle:
            data = handle.read()
    except OSError as error:
        yield BadRecord(path, -1, "unreadable_file", str(error))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        yield BadRecord(path, 0, "non_utf8", str(error))
        return
    yield _check_text(path, 0, text, "text")


def read_hub(subset: SubsetConfig) -> Iterator[Record]:
    """A Hub dataset (or a ``datasets`` builder such as ``json`` with ``data_files``), streamed."""
    from datasets import load_dataset

    spec = dict(subset.hub or {})
    path = spec.pop("path")
    split = spec.pop("split", "train")
    stream = load_dataset(path, split=split, streaming=True, **spec)
    source = f"hub:{path}"
    for index, row in enumerate(stream):
        yield _check_text(source, index, row.get(subset.text_field), subset.text_field)


def read_source(subset: SubsetConfig, source: str) -> Iterator[Record]:
    """All records of one source (a file, or ``hub:<id>``) of ``subset``."""
    if subset.format == "hub":
        return read_hub(subset)
    kind = file_format(subset, source)
    if kind == "jsonl":
        return read_jsonl(source, subset.text_field)
    if kind == "parquet":
        return read_parquet(source, subset.text_field)
    return read_text(source)
