"""SFT source adapters: the real datasets' schemas -> K2-Chat ``messages``, with every rejection counted.

* ``openhermes``: OpenHermes-2.5, ``conversations: [{from: system|human|gpt, value}]``
* ``flan``: FLAN collections, ``inputs`` / ``targets`` (task/template fields are ignored)
* ``do_not_answer``: Do-Not-Answer, ``question`` + a safe response column (configurable; rows whose
  ``<model>_harmful`` flag is set are rejected as ``harmful_response``)
* ``messages``: generic ``messages: [{role, content}]``

Local files (JSON/JSONL, Parquet, CSV) are read here; a Hub id goes through ``datasets.load_dataset``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2hf.chat_template import ConversationError, validate_conversation

Messages = list[dict[str, str]]
OPENHERMES_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Rejected:
    """A record that is not a usable conversation, and why (a short reason code)."""

    record: int
    reason: str
    detail: str = ""


class AdapterError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def _field(row: dict, name: str) -> Any:
    if name not in row or row[name] is None:
        raise AdapterError("missing_field", f"no field {name!r}")
    return row[name]


def openhermes(row: dict, **_: Any) -> Messages:
    turns = _field(row, "conversations")
    if not isinstance(turns, list):
        raise AdapterError("malformed_conversation", "conversations is not a list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise AdapterError("malformed_conversation", "a turn is not an object")
        role = OPENHERMES_ROLES.get(turn.get("from"))
        if role is None:
            raise AdapterError("unknown_role", f"from={turn.get('from')!r}")
        messages.append({"role": role, "content": turn.get("value")})
    return messages


def flan(row: dict, **_: Any) -> Messages:
    return [{"role": "user", "content": _field(row, "inputs")}, {"role": "assistant", "content": _field(row, "targets")}]


def do_not_answer(row: dict, response_column: str = "GPT4_response", harmful_column: str | None = "auto",
                  **_: Any) -> Messages:
    if harmful_column == "auto":
        harmful_column = response_column.replace("_response", "_harmful")
    if harmful_column and row.get(harmful_column) not in (None, "", 0, "0", False):
        raise AdapterError("harmful_response", f"{harmful_column}={row.get(harmful_column)!r}")
    return [{"role": "user", "content": _field(row, "question")},
            {"role": "assistant", "content": _field(row, response_column)}]


def messages(row: dict, messages_column: str = "messages", **_: Any) -> Messages:
    value = _field(row, messages_column)
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise AdapterError("malformed_conversation", f"{messages_column} is not a list of messages")
    return [{"role": m.get("role"), "content": m.get("content")} for m in value]


ADAPTERS = {"openhermes": openhermes, "flan": flan, "do_not_answer": do_not_answer, "messages": messages}


def to_conversation(kind: str, row: dict, options: dict[str, Any]) -> Messages:
    """Adapt and validate one row; raises :class:`AdapterError` with a reason code."""
    try:
        conversation = ADAPTERS[kind](row, **options)
    except AdapterError:
        raise
    try:
        validate_conversation(conversation)
    except ConversationError as error:
        raise AdapterError(error.reason, str(error)) from None
    if not any(m["role"] == "assistant" for m in conversation):
        raise AdapterError("no_assistant_turn", "nothing to train on")
    if any(not m["content"].strip() for m in conversation if m["role"] != "system"):
        raise AdapterError("empty_message", "a user or assistant message is empty")
    return conversation


def read_rows(paths: list[str] | None, hub: dict[str, Any] | None) -> Iterator[tuple[int, dict | Rejected]]:
    """``(record, row)`` for every record of the source; unparseable records come as :class:`Rejected`."""
    if hub is not None:
        from datasets import load_dataset

        spec = dict(hub)
        stream = load_dataset(spec.pop("path"), split=spec.pop("split", "train"), streaming=True, **spec)
        yield from enumerate(stream)
        return
    index = 0
    for path in paths or []:
        suffix = Path(path).suffix
        if suffix in (".jsonl", ".json"):
            rows = _read_json(path)
        elif suffix == ".parquet":
            rows = _read_parquet(path)
        elif suffix == ".csv":
            rows = _read_csv(path)
        else:
            raise ValueError(f"{path}: unsupported file type (use .jsonl/.json, .parquet or .csv)")
        for row in rows:
            yield index, row if isinstance(row, dict) else Rejected(index, *row)
            index += 1


def _read_json(path: str) -> Iterator[dict | tuple[str, str]]:
    with open(path, "rb") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
    if head == b"[":  # a JSON array file
        with open(path, encoding="utf-8") as f:
            yield from json.load(f)
        return
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield ("non_utf8", f"{path} line {line_no}")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield ("malformed_json", f"{path} line {line_no}: {error}")
                continue
            yield value if isinstance(value, dict) else ("malformed_json", f"{path} line {line_no}: not an object")


def _read_parquet(path: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _read_csv(path: str) -> Iterator[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def resolve_paths(patterns: list[str], base_dir: str) -> list[str]:
    import glob

    files = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.join(base_dir, pattern)
        matched = sorted(glob.glob(full, recursive=True))
        if not matched:
            raise FileNotFoundError(f"{pattern!r} matches no file (looked in {base_dir})")
        files.extend(os.path.normpath(m) for m in matched)
    return files
