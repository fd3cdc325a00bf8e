"""Reading records from files, with every bad one accounted for: one reader and one rejection type, shared by
pretraining data (documents), SFT sources (conversations) and the K2 release import (token rows).

:func:`read_records` yields ``(record, row)`` for each record of a JSONL (or JSON array), Parquet, CSV or text
file (a local path, any fsspec URL, or an open binary handle) and a :class:`Rejection` in the place of one that
cannot be read. Callers turn rows into what they need and raise :class:`Rejection` (with their own reason code)
for rows that cannot become one; both end up counted per reason, or stop the run, as the caller decides.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .formats.prepared_data import is_url

# what the reader itself reports; callers add their own reasons (``missing_text_field``, ``unknown_role``, ...)
READ_REASONS = ("unreadable_file", "non_utf8", "malformed_json", "empty_record")
EXTENSION_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


class Rejection(ValueError):
    """A record that cannot be used: why (``reason``, a short code for reports, and ``detail``) and, once known,
    where (``source`` and the 0-based ``record``; -1 for a whole file)."""

    def __init__(self, reason: str, detail: str = "", source: str = "", record: int = -1) -> None:
        super().__init__(detail or reason.replace("_", " "))
        self.reason, self.detail, self.source, self.record = reason, detail, source, record

    def at(self, source: str, record: int) -> Rejection:
        """The same rejection, placed."""
        return Rejection(self.reason, self.detail, source, record)

    def message(self) -> str:
        """``a.jsonl line 2: malformed json: Expecting ...`` (1-based lines, as editors count)."""
        line = f" line {self.record + 1}" if self.record >= 0 else ""
        return f"{self.source}{line}: {self.reason.replace('_', ' ')}{': ' + self.detail if self.detail else ''}"

    def __repr__(self) -> str:
        return f"Rejection({self.reason!r}, {self.detail!r}, {self.source!r}, {self.record})"


Record = tuple[int, dict[str, Any]] | Rejection


def open_source(path: str) -> IO[bytes]:
    """A local path, or any fsspec URL (``s3://``, ``gs://``, ``hf://``, ``https://`` ...), opened for reading."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def record_format(path: str) -> str | None:
    """``jsonl``, ``parquet``, ``csv`` or ``text`` from the file name; None when it does not tell."""
    return EXTENSION_FORMATS.get(Path(path).suffix.lower())


def read_records(source: str | IO[bytes], format: str | None = None, columns: list[str] | None = None,
                 name: str | None = None) -> Iterator[Record]:
    """Every record of one file. ``format`` defaults to :func:`record_format`; ``columns`` limits what Parquet
    reads (rows still come, without a column the file lacks); ``name`` names an open handle in rejections. A text
    file is one record, ``{"text": <the whole file>}``."""
    name = name or (source if isinstance(source, str) else getattr(source, "name", "<stream>"))
    format = format or record_format(name)
    if format not in ("jsonl", "parquet", "csv", "text"):
        raise ValueError(f"{name}: cannot tell the format (use .jsonl/.json, .parquet, .csv or .txt)")
    try:
        handle = open_source(source) if isinstance(source, str) else source
    except OSError as error:
        yield Rejection("unreadable_file", str(error), name)
        return
    with handle:
        reader = {"jsonl": _jsonl, "parquet": _parquet, "csv": _csv, "text": _text}[format]
        for index, row in reader(handle, columns):
            yield row.at(name, index) if isinstance(row, Rejection) else (index, row)


def _jsonl(handle: IO[bytes], _: Any) -> Iterator[tuple[int, dict | Rejection]]:
    """One JSON object per line (blank lines are records too: ``empty_record``), or one JSON array of objects."""
    first = _first_byte(handle)
    lines = enumerate([handle.read()]) if first == b"[" else enumerate(handle)
    for index, raw in lines:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield index, Rejection("non_utf8", str(error))
            continue
        if not text.strip():
            yield index, Rejection("empty_record", "blank line")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            yield index, Rejection("malformed_json", str(error))
            continue
        if first == b"[" and isinstance(value, list):
            yield from ((i, _object(v)) for i, v in enumerate(value))
        else:
            yield index, _object(value)


def _first_byte(handle: IO[bytes]) -> bytes:
    """The first non-blank byte, without consuming anything (b"" when the stream cannot look ahead)."""
    if hasattr(handle, "peek"):
        return handle.peek(64).lstrip()[:1]
    if handle.seekable():
        position = handle.tell()
        head = handle.read(64)
        handle.seek(position)
        return head.lstrip()[:1]
    return b""


def _object(value: Any) -> dict | Rejection:
    return value if isinstance(value, dict) else Rejection("malformed_json", f"a JSON {type(value).__name__}, "
                                                                             "not an object")


def _parquet(handle: IO[bytes], columns: list[str] | None) -> Iterator[tuple[int, dict | Rejection]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(handle)
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) on corrupt files
        yield -1, Rejection("unreadable_file", str(error))
        return
    wanted = [c for c in columns if c in parquet.schema_arrow.names] if columns else None
    if columns and not wanted:  # nothing asked for is there: the rows still count, empty
        yield from ((i, {}) for i in range(parquet.metadata.num_rows))
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=wanted):  # bounded memory
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _csv(handle: IO[bytes], _: Any) -> Iterator[tuple[int, dict | Rejection]]:
    try:
        yield from enumerate(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8", newline="")))
    except UnicodeDecodeError as error:
        yield -1, Rejection("non_utf8", str(error))


def _text(handle: IO[bytes], _: Any) -> Iterator[tuple[int, dict | Rejection]]:
    try:
        yield 0, {"text": handle.read().decode("utf-8")}
    except UnicodeDecodeError as error:
        yield 0, Rejection("non_utf8", str(error))


__all__ = ["EXTENSION_FORMATS", "READ_REASONS", "Rejection", "open_source", "read_records", "record_format"]
