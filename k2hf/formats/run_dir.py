"""A pretraining run directory: every path in it, its record files as typed events, and its checkpoints.

```
RUN/
  data_sequence.jsonl        every step's chunk and rows, and every event   (events.py)
  metrics.jsonl              one record per step of the final model's history
  metrics_rolled_back.jsonl  steps a spike rollback took back, tagged with the rollback's number
  spikes.jsonl               each spike the online detector classified, with the action taken
  training_curves.png        loss, grad norm, lr; spikes_analysis.png is `k2hf spikes analyze`'s
  checkpoints/ckpt_NNN/      after each chunk; step_NNNNNNN/ mid-chunk        (checkpoint.py)
  spikes/spike_NNN_step_N/   the diverged model at a malignant spike, + metrics_diverged.jsonl, superseded/
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, Kind, is_complete, kind_of
from .events import End, Event, Start, live_steps, parse_event, spike_action
from .jsonl import JsonlFile


class RunDir:
    """The one owner of a run dir's layout. ``writable`` (the main rank of a training) may append and cut back
    the record files; every reader opens it read-only."""

    DATA_SEQUENCE = "data_sequence.jsonl"
    METRICS = "metrics.jsonl"
    ROLLED_BACK = "metrics_rolled_back.jsonl"
    SPIKES = "spikes.jsonl"
    CURVES = "training_curves.png"
    SPIKES_ANALYSIS = "spikes_analysis.png"
    CHECKPOINTS = "checkpoints"
    EVIDENCE = "spikes"
    SUPERSEDED = "superseded"  # inside an evidence dir: checkpoints of the diverged timeline
    DIVERGED_METRICS = "metrics_diverged.jsonl"  # inside an evidence dir

    def __init__(self, path: str | os.PathLike, writable: bool = False) -> None:
        self.path = Path(path)
        self.writable = writable
        self.data_sequence = JsonlFile(self.path / self.DATA_SEQUENCE, writable)
        self.metrics = JsonlFile(self.path / self.METRICS, writable)
        self.rolled_back = JsonlFile(self.path / self.ROLLED_BACK, writable)
        self.spikes = JsonlFile(self.path / self.SPIKES, writable)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def is_run_dir(cls, path: str | os.PathLike) -> bool:
        """A folder a pretraining run wrote (its checkpoints or its data sequence)."""
        path = Path(path)
        return (path / cls.CHECKPOINTS).is_dir() or (path / cls.DATA_SEQUENCE).is_file()

    # ------------------------------------------------------------------ paths
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def evidence_dir(self) -> Path:
        return self.path / self.EVIDENCE

    @property
    def curves_png(self) -> Path:
        return self.path / self.CURVES

    @property
    def spikes_analysis_png(self) -> Path:
        return self.path / self.SPIKES_ANALYSIS

    def evidence(self, name: str) -> Path:
        """The evidence dir of a spike (``spike_001_step_0000022``)."""
        return self.evidence_dir / name

    def evidence_ref(self, name: str) -> str:
        """How the data sequence refers to an evidence dir (relative to the run dir)."""
        return f"{self.EVIDENCE}/{name}"

    # ------------------------------------------------------------------ records
    def events(self) -> list[Event]:
        """``data_sequence.jsonl`` as typed events, in the order they happened."""
        return [parse_event(record) for record in self.data_sequence.read()]

    def append(self, event: Event) -> None:
        self.data_sequence.append(event.to_record())

    def start(self) -> Start | None:
        """The run's start record (order, data, spike settings), or None for a run dir without one."""
        first = self.data_sequence.first()
        return parse_event(first) if first and first.get("event") == Start.EVENT else None

    def ended(self) -> bool:
        """Whether the training has ended: its record's last event is an :class:`End` (a run that is training,
        was preempted or was killed has none; resuming cuts it back)."""
        last = self.data_sequence.last() if self.data_sequence.path.is_file() else None
        return bool(last) and last.get("event") == End.EVENT

    def live_steps(self) -> list:
        """The train steps of the final model's history (a rollback discards the steps after its target)."""
        return live_steps(self.events())

    def spike_records(self) -> list[dict[str, Any]]:
        """``spikes.jsonl`` with each ``action`` read as a :class:`~.events.SpikeAction`."""
        return [{**record, "action": spike_action(record)} for record in self.spikes.read()]

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self, kinds: tuple[Kind, ...] = ("chunk", "step", "spike_evidence")) -> list[Checkpoint]:
        """The complete checkpoints of ``kinds`` (chunk and step ones under ``checkpoints/``, spike evidence
        under ``spikes/``), in training order: by global step, a chunk's checkpoint before a step checkpoint
        at the same step. A save in progress (``.ckpt_007.tmp``) is never one."""
        found = []
        for folder, here in ((self.checkpoints_dir, ("chunk", "step")), (self.evidence_dir, ("spike_evidence",))):
            if folder.is_dir():
                found += [Checkpoint.from_folder(p) for p in folder.iterdir()
                          if kind_of(p.name) in here and kind_of(p.name) in kinds and is_complete(p)]
        rank = {"chunk": 0, "step": 1, "spike_evidence": 2}
        return sorted(found, key=lambda c: (c.global_step, rank[c.kind], c.name))

    def training_checkpoints(self) -> list[Checkpoint]:
        """The checkpoints a run resumes or rolls back from (chunk and step ones), oldest first."""
        return self.checkpoints(("chunk", "step"))

    def latest_checkpoint(self) -> Checkpoint | None:
        found = self.training_checkpoints()
        return found[-1] if found else None


__all__ = ["RunDir"]
