"""Documents from local or fsspec files (JSONL / Parquet / text) or a streamed Hub dataset, each accounted for.

Each source yields ``(record_index, text)`` for good documents and a :class:`~k2hf.records.Rejection` for bad ones
(the reasons of :data:`~k2hf.records.READ_REASONS`, plus ``missing_text_field`` and ``empty_document``); the
caller decides (``on_error``) whether a bad record stops the run or is counted and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from k2hf.records import READ_REASONS, Rejection, read_records

from .config import SubsetConfig, file_format

SKIP_REASONS = (*READ_REASONS, "missing_text_field", "empty_document")
Document = tuple[int, str] | Rejection


def document(source: str, index: int, row: dict[str, Any], field: str) -> Document:
    """The text of one record, or why it is not a document."""
    value = row.get(field)
    if not isinstance(value, str):
        kind = "missing" if value is None else f"not a string ({type(value).__name__})"
        return Rejection("missing_text_field", f"field {field!r} {kind}", source, index)
    if not value.strip():
        return Rejection("empty_document", "", source, index)
    return index, value


def read_hub(subset: SubsetConfig) -> Iterator[Document]:
    """A Hub dataset (or a ``datasets`` builder such as ``json`` with ``data_files``), streamed."""
    from datasets import load_dataset

    spec = dict(subset.hub or {})
    path = spec.pop("path")
    split = spec.pop("split", "train")
    stream = load_dataset(path, split=split, streaming=True, **spec)
    source = f"hub:{path}"
    for index, row in enumerate(stream):
        yield document(source, index, row, subset.text_field)


def read_source(subset: SubsetConfig, source: str) -> Iterator[Document]:
    """All documents of one source (a file, or ``hub:<id>``) of ``subset``."""
    if subset.format == "hub":
        yield from read_hub(subset)
        return
    kind = file_format(subset, source)
    field = "text" if kind == "text" else subset.text_field
    for item in read_records(source, kind, columns=[field]):
        yield item if isinstance(item, Rejection) else document(source, *item, field)
