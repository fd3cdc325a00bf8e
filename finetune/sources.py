"""SFT source adapters: the real datasets' schemas -> K2-Chat ``messages``, with every rejection counted.

* ``openhermes``: OpenHermes-2.5, ``conversations: [{from: system|human|gpt, value}]``
* ``flan``: FLAN collections, ``inputs`` / ``targets`` (task/template fields are ignored)
* ``do_not_answer``: Do-Not-Answer, ``question`` + a safe response column (configurable; rows whose
  ``<model>_harmful`` flag is set are rejected as ``harmful_response``)
* ``messages``: generic ``messages: [{role, content}]``

Local files (JSON/JSONL, Parquet, CSV) are read here; a Hub id goes through ``datasets.load_dataset``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from k2hf.chat_template import validate_conversation
from k2hf.records import Record, Rejection, read_records

Messages = list[dict[str, str]]
OPENHERMES_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def _field(row: dict, name: str) -> Any:
    if name not in row or row[name] is None:
        raise Rejection("missing_field", f"no field {name!r}")
    return row[name]


def openhermes(row: dict, **_: Any) -> Messages:
    turns = _field(row, "conversations")
    if not isinstance(turns, list):
        raise Rejection("malformed_conversation", "conversations is not a list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise Rejection("malformed_conversation", "a turn is not an object")
        role = OPENHERMES_ROLES.get(turn.get("from"))
        if role is None:
            raise Rejection("unknown_role", f"from={turn.get('from')!r}")
        messages.append({"role": role, "content": turn.get("value")})
    return messages


def flan(row: dict, **_: Any) -> Messages:
    return [{"role": "user", "content": _field(row, "inputs")},
            {"role": "assistant", "content": _field(row, "targets")}]


def do_not_answer(row: dict, response_column: str = "GPT4_response", harmful_column: str | None = "auto",
                  **_: Any) -> Messages:
    if harmful_column == "auto":
        harmful_column = response_column.replace("_response", "_harmful")
    if harmful_column and row.get(harmful_column) not in (None, "", 0, "0", False):
        raise Rejection("harmful_response", f"{harmful_column}={row.get(harmful_column)!r}")
    return [{"role": "user", "content": _field(row, "question")},
            {"role": "assistant", "content": _field(row, response_column)}]


def messages(row: dict, messages_column: str = "messages", **_: Any) -> Messages:
    value = _field(row, messages_column)
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise Rejection("malformed_conversation", f"{messages_column} is not a list of messages")
    return [{"role": m.get("role"), "content": m.get("content")} for m in value]


ADAPTERS = {"openhermes": openhermes, "flan": flan, "do_not_answer": do_not_answer, "messages": messages}


def to_conversation(kind: str, row: dict, options: dict[str, Any]) -> Messages:
    """Adapt and validate one row; raises :class:`~k2hf.records.Rejection` with a reason code."""
    conversation = ADAPTERS[kind](row, **options)
    validate_conversation(conversation)  # its ConversationError is a Rejection too
    if not any(m["role"] == "assistant" for m in conversation):
        raise Rejection("no_assistant_turn", "nothing to train on")
    if any(not m["content"].strip() for m in conversation if m["role"] != "system"):
        raise Rejection("empty_message", "a user or assistant message is empty")
    return conversation


def read_rows(paths: list[str] | None, hub: dict[str, Any] | None) -> Iterator[tuple[int, Record]]:
    """``(record, item)`` for every record of the source, numbered across its files; ``item`` is ``(line, row)``
    or the :class:`~k2hf.records.Rejection` of a record that cannot be read."""
    if hub is not None:
        from datasets import load_dataset

        spec = dict(hub)
        stream = load_dataset(spec.pop("path"), split=spec.pop("split", "train"), streaming=True, **spec)
        yield from ((index, (index, row)) for index, row in enumerate(stream))
        return
    index = 0
    for path in paths or []:
        for item in read_records(path):
            yield index, item
            index += 1


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
