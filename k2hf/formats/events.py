"""The records of a run's ``data_sequence.jsonl`` and ``spikes.jsonl``, as typed values.

``data_sequence.jsonl`` holds one record per line: the run's start, every optimizer step (the chunk and the exact
rows it trained on), every skipped step, every chunk end (which writes ``ckpt_N``), rollback, halt and data change.
The file is never rewritten after a rollback: the diverged steps stay, followed by the rollback event, so the
history can be replayed (:func:`live_steps`). On disk a record is a flat JSON object with its ``step`` and, for
everything but a train step, its ``event`` name; :func:`parse_event` and :meth:`to_record` convert both ways, and
read every run dir k2hf has written.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import UserError


class EventError(UserError):
    """A data-sequence record this version of k2hf cannot read."""


@dataclass(frozen=True)
class _Event:
    EVENT: ClassVar[str | None] = None  # the record's ``event`` name (None: a train step)
    RENAMED: ClassVar[dict[str, str]] = {}  # field name -> key on disk, where they differ

    step: int  # the global step the run was at (for a train step: the step it made)

    def to_record(self) -> dict[str, Any]:
        """The JSON object written to the log (keys in field order, optional fields only when set)."""
        record: dict[str, Any] = {"step": self.step}
        if self.EVENT is not None:
            record["event"] = self.EVENT
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            record[self.RENAMED.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> _Event:
        values = {}
        for f in dataclasses.fields(cls):
            key = cls.RENAMED.get(f.name, f.name)
            if key in record:
                value = record[key]
                values[f.name] = tuple(value) if f.type == "tuple[int, int]" else value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise EventError(f"a {cls.EVENT or 'train step'} record without {key!r}: {record}")
        return cls(**values)


@dataclass(frozen=True)
class Start(_Event):
    """A fresh start: the planned chunk order, the data dir and the spike settings the run detects with."""

    EVENT: ClassVar[str] = "start"
    order: list[int] = field(default_factory=list)
    data: str | None = None
    spikes: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainStep(_Event):
    """An optimizer step over rows ``[rows[0], rows[1])`` of ``chunk`` (``row_ids`` once the chunk is reseeded)."""

    chunk: int
    order_pos: int
    rows: tuple[int, int]
    row_ids: list[int] | None = None

    def row_indices(self) -> list[int] | range:
        return self.row_ids if self.row_ids is not None else range(*self.rows)


@dataclass(frozen=True)
class Skip(_Event):
    """A step whose rows were never trained on (the ``skip_window`` spike policy)."""

    EVENT: ClassVar[str] = "skip"
    chunk: int
    rows: tuple[int, int]


@dataclass(frozen=True)
class ChunkEnd(_Event):
    """``chunk`` is done (``ckpt_{order_pos + 1}`` is written); the rows that do not fill a global batch are not
    trained."""

    EVENT: ClassVar[str] = "chunk_end"
    chunk: int
    order_pos: int
    rows_trained: int
    rows_not_trained: tuple[int, int]
    row_ids_not_trained: list[int] | None = None

    @property
    def checkpoint_number(self) -> int:
        return self.order_pos + 1


@dataclass(frozen=True)
class Rollback(_Event):
    """A malignant spike rolled the model back from ``step`` to checkpoint ``to`` (step ``to_step``); ``order``
    and the position are the data position after the policy changed it; ``evidence`` the diverged model's dir.

    Written last, once the spike record and the taken-back metrics are on disk: it commits the decision. A run
    resumed from ``to`` before a newer checkpoint exists applies it again (``position``: the whole data position
    after the policy; ``rollbacks``: the count after it; the record files' lengths at the commit) instead of
    replaying the spike. Rollbacks written before these fields existed have them None."""

    EVENT: ClassVar[str] = "rollback"
    to_step: int
    to: str
    onset_step: int
    policy: str
    order: list[int]
    order_pos: int
    step_in_chunk: int
    evidence: str
    position: dict[str, Any] | None = None
    rollbacks: int | None = None
    spikes_lines: int | None = None
    rolled_back_lines: int | None = None

    @property
    def replayable(self) -> bool:
        """Whether a resume can apply this decision again (everything it needs is recorded)."""
        return None not in (self.position, self.rollbacks, self.spikes_lines, self.rolled_back_lines)


@dataclass(frozen=True)
class Halt(_Event):
    EVENT: ClassVar[str] = "halt"
    reason: str
    evidence: str | None = None


@dataclass(frozen=True)
class End(_Event):
    """The training loop ended (``reason``: ``data``: the sequence is exhausted; ``max_steps``; ``halted``); a
    preempted or killed run writes none. The last record of a finished run (a resume cuts it back)."""

    EVENT: ClassVar[str] = "end"
    reason: str


@dataclass(frozen=True)
class DataChanged(_Event):
    """A resume onto other prepared data, on purpose (``allow_data_change``)."""

    EVENT: ClassVar[str] = "data_changed"
    RENAMED: ClassVar[dict[str, str]] = {"from_sha256": "from", "to_sha256": "to"}
    from_sha256: str
    to_sha256: str
    data: str


Event = Start | TrainStep | Skip | ChunkEnd | Rollback | Halt | End | DataChanged
_BY_NAME: dict[str | None, type[_Event]] = {cls.EVENT: cls for cls in (Start, TrainStep, Skip, ChunkEnd, Rollback,
                                                                         Halt, End, DataChanged)}


def parse_event(record: dict[str, Any]) -> Event:
    """The typed event of one data-sequence record."""
    name = record.get("event")
    if name not in _BY_NAME:
        raise EventError(f"unknown data-sequence event {name!r} (written by a newer k2hf?): {record}")
    return _BY_NAME[name].from_record(record)


def live_steps(events: list[Event]) -> list[TrainStep]:
    """The train steps the model state after the last of ``events`` went through: each rollback discards the
    steps logged after its target."""
    steps: list[TrainStep] = []
    for event in events:
        if isinstance(event, Rollback):
            steps = [s for s in steps if s.step <= event.to_step]
        elif isinstance(event, TrainStep):
            steps.append(event)
    return steps


# ---------------------------------------------------------------------------------------------- spikes.jsonl
@dataclass(frozen=True)
class SpikeAction:
    """What the run did about a spike: nothing (benign), a rollback to checkpoint ``to`` under ``policy``, or a
    halt (with its ``reason``)."""

    kind: Literal["none", "rollback", "halt"] = "none"
    to: str | None = None
    policy: str | None = None
    reason: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_record(cls, value: dict[str, Any] | str) -> SpikeAction:
        """Also reads the prose of run dirs written before actions were structured (``"rollback to ckpt_002 +
        defer_chunk"``, ``"halt"``, ``"none"``)."""
        if isinstance(value, dict):
            return cls(**value)
        if m := re.fullmatch(r"rollback to (\S+) \+ (\S+)", value):
            return cls("rollback", to=m.group(1), policy=m.group(2))
        if value in ("none", "halt"):
            return cls(value)
        raise EventError(f"unknown spike action {value!r}")

    def describe(self) -> str:
        return f"rollback to {self.to} + {self.policy}" if self.kind == "rollback" else self.kind


def spike_record(summary: dict[str, Any], action: SpikeAction) -> dict[str, Any]:
    """One line of ``spikes.jsonl``: the detector's summary of the spike and the action taken."""
    return {**summary, "action": action.to_record()}


def spike_action(record: dict[str, Any]) -> SpikeAction:
    """The action of one ``spikes.jsonl`` record, whichever k2hf wrote it."""
    return SpikeAction.from_record(record.get("action", "none"))


__all__ = ["ChunkEnd", "DataChanged", "End", "Event", "EventError", "Halt", "Rollback", "Skip", "SpikeAction", "Start",
           "TrainStep", "live_steps", "parse_event", "spike_action", "spike_record"]
