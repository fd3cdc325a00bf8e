"""Append-only JSONL files: the one reader and writer of every ``*.jsonl`` record file a run writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError


class RecordFileError(UserError):
    """A record file with a line that is not a JSON object (named with its file and line)."""


class JsonlFile:
    """One JSONL file of records. Written by one process (``writable``: the main rank), readable by all.

    A resume cuts it back to what a checkpoint saw (:meth:`truncate_to_lines`, or :meth:`truncate_after` a step),
    so nothing is recorded twice.
    """

    def __init__(self, path: str | Path, writable: bool = True) -> None:
        self.path, self.writable = Path(path), writable

    def exists(self) -> bool:
        return self.path.is_file()

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line.strip()] if self.path.is_file() else []

    def read(self) -> list[dict[str, Any]]:
        """Every record, in order (``[]`` when the file does not exist)."""
        records = []
        for number, line in enumerate(self._lines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordFileError(f"{self.path} line {number}: malformed json ({error.msg})") from None
            if not isinstance(record, dict):
                raise RecordFileError(f"{self.path} line {number}: not a JSON object")
            records.append(record)
        return records

    def first(self) -> dict[str, Any] | None:
        """The first record only (without reading the rest of a long file)."""
        if not self.path.is_file():
            return None
        with open(self.path) as f:
            line = f.readline()
        return json.loads(line) if line.strip() else None

    def last(self, block: int = 1 << 16) -> dict[str, Any] | None:
        """The last complete record (read from the end: a reader polling a long log while it grows); a line still
        being written (no newline yet) does not count."""
        if not self.path.is_file():
            return None
        with open(self.path, "rb") as f:
            end = f.seek(0, 2)
            tail = b""
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                tail = f.read(end - start) + tail
                end = start
                lines = [line for line in tail[: tail.rfind(b"\n") + 1].splitlines() if line.strip()]
                if len(lines) > 1 or (lines and end == 0):
                    return json.loads(lines[-1])
        return None

    def line_count(self) -> int:
        return len(self._lines())

    def append(self, record: dict[str, Any]) -> None:
        if self.writable:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def rewrite(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Keep the records ``keep`` accepts; returns the ones dropped."""
        if not (self.writable and self.path.is_file()):
            return []
        kept, dropped = [], []
        for line in self._lines():
            (kept if keep(json.loads(line)) else dropped).append(line)
        self.path.write_text("".join(line + "\n" for line in kept))
        return [json.loads(line) for line in dropped]

    def truncate_to_lines(self, count: int) -> None:
        if self.writable and self.path.is_file():
            self.path.write_text("".join(line + "\n" for line in self._lines()[:count]))

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Drop the records after ``step``; returns them."""
        return self.rewrite(lambda record: record.get("step", 0) <= step)


__all__ = ["JsonlFile", "RecordFileError"]
