"""What a training run actually did, read back from its data-sequence log.

The trainer appends every optimizer step (chunk, row range or row ids), every chunk end (which writes
``ckpt_N``), every skip, rollback and halt to ``data_sequence.jsonl``, and never rewrites history: after a
loss-spike rollback the diverged steps stay in the file, followed by the rollback event. Replaying the file
gives, for every checkpoint, the chunk it was trained on last and the exact rows behind it, including when a
rollback deferred a chunk and the run diverged from the data manifest's plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from k2hf.errors import UserError
from k2hf.formats import (
    CHUNK_CHECKPOINT,
    SPIKE_EVIDENCE,
    STEP_CHECKPOINT,
    ChunkEnd,
    Event,
    Halt,
    Rollback,
    RunDir,
    TrainStep,
    live_steps,
)


class RunRecordError(UserError):
    """A run dir without a readable data-sequence log, or a checkpoint the log does not know."""


@dataclass(frozen=True)
class ChunkCheckpoint:
    """``ckpt_N`` of a run: the chunk it finished, at which step, and the chunk the plan had at that place."""

    number: int
    chunk: int
    global_step: int
    planned_chunk: int | None


class RunRecord:
    """The replayable history of one run dir (``RUN/data_sequence.jsonl``)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        if not self.run.data_sequence.exists():
            raise RunRecordError(f"{self.run_dir} has no {RunDir.DATA_SEQUENCE}: not a k2hf pretraining run dir")
        self.events: list[Event] = self.run.events()
        start = self.run.start()
        self.planned_order: list[int] | None = start.order if start else None
        self.data_dir: Path | None = Path(start.data) if start and start.data else None

    # ------------------------------------------------------------------ checkpoints -> chunks
    def chunk_checkpoints(self) -> list[ChunkCheckpoint]:
        """Every ``ckpt_N`` the run wrote, as the files on disk have it (a later write of ``ckpt_N`` wins)."""
        found: dict[int, ChunkCheckpoint] = {}
        plan = self.planned_order
        for event in self.events:
            if isinstance(event, ChunkEnd):
                n = event.checkpoint_number
                found[n] = ChunkCheckpoint(n, event.chunk, event.step, plan[n - 1] if plan and n <= len(plan) else None)
        return [found[n] for n in sorted(found)]

    # ------------------------------------------------------------------ checkpoints -> rows
    def trained_rows(self, checkpoint: str) -> dict[int, np.ndarray]:
        """The rows (per chunk, sorted row indices) that the model state of ``checkpoint`` was trained on:
        ``ckpt_007``, ``step_0001234`` or a spike-evidence name such as ``spike_001_step_0000022``."""
        position = self._position_of(checkpoint)
        rows: dict[int, list[int]] = {}
        for step in live_steps(self.events[: position + 1]):
            rows.setdefault(step.chunk, []).extend(step.row_indices())
        return {chunk: np.unique(np.asarray(ids, dtype=np.int64)) for chunk, ids in rows.items()}

    def _position_of(self, checkpoint: str) -> int:
        """Index of the event after which ``checkpoint`` was written (its last write)."""
        position = None
        if m := CHUNK_CHECKPOINT.match(checkpoint):
            for i, e in enumerate(self.events):
                if isinstance(e, ChunkEnd) and e.checkpoint_number == int(m.group(1)):
                    position = i
        elif m := STEP_CHECKPOINT.match(checkpoint):
            for i, e in enumerate(self.events):
                if isinstance(e, TrainStep) and e.step == int(m.group(1)):
                    position = i
        elif SPIKE_EVIDENCE.match(checkpoint):
            for i, e in enumerate(self.events):
                if isinstance(e, (Rollback, Halt)) and e.evidence == self.run.evidence_ref(checkpoint):
                    position = i - 1  # the evidence is the diverged state, saved before the rollback
        if position is None:
            raise RunRecordError(f"{RunDir.DATA_SEQUENCE} of {self.run_dir} records no checkpoint {checkpoint!r}")
        return position


__all__ = ["ChunkCheckpoint", "RunRecord", "RunRecordError"]
