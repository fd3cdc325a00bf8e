"""A checkpoint of a run: its name (``ckpt_007``, ``step_0001234``, ``spike_001_step_0000022``), the trainer's
state saved with it (``trainer_state.json``), and the :class:`Checkpoint` value every lister returns.

Checkpoint folders hold the model in Hugging Face format (``config.json``, ``*.safetensors``, remote code) and
the tokenizer, ``training_state/`` (accelerate's ``save_state``: optimizer, schedule, every rank's RNG) and
``trainer_state.json``, written last: a folder with it is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TRAINER_STATE = "trainer_state.json"
TRAINING_STATE_DIR = "training_state"
CHUNK_CHECKPOINT = re.compile(r"^ckpt_(\d+)$")
STEP_CHECKPOINT = re.compile(r"^step_(\d+)$")
SPIKE_EVIDENCE = re.compile(r"^spike_(\d+)_step_(\d+)$")

Kind = Literal["chunk", "step", "spike_evidence", "model"]


def chunk_checkpoint_name(number: int) -> str:
    """``ckpt_001`` is the checkpoint after the first chunk of the training order (``number`` is 1-based)."""
    return f"ckpt_{number:03d}"


def step_checkpoint_name(global_step: int) -> str:
    return f"step_{global_step:07d}"


def spike_evidence_name(number: int, global_step: int) -> str:
    """The diverged model kept at the ``number``-th malignant spike, detected at ``global_step``."""
    return f"spike_{number:03d}_step_{global_step:07d}"


def kind_of(name: str) -> Kind | None:
    """The kind of checkpoint a folder name says (None: not a checkpoint name)."""
    if CHUNK_CHECKPOINT.match(name):
        return "chunk"
    if STEP_CHECKPOINT.match(name):
        return "step"
    if SPIKE_EVIDENCE.match(name):
        return "spike_evidence"
    return None


@dataclass
class TrainerState:
    """``trainer_state.json``: the pretraining loop's counters, its data position, and what the run's logs and
    data were when the checkpoint was saved."""

    global_step: int = 0
    tokens_seen: int = 0  # tokens of every optimizer step the model state went through
    rollbacks: int = 0
    # the data position (owned by k2hf.pretrain.position.DataPosition)
    order: list[int] = field(default_factory=list)
    order_pos: int = 0
    step_in_chunk: int = 0
    skipped_rows: dict[str, list[list[int]]] = field(default_factory=dict)
    resume_steps: dict[str, int] = field(default_factory=dict)
    skip_steps: dict[str, list[list[int]]] = field(default_factory=dict)
    reseeds: dict[str, list[int]] = field(default_factory=dict)
    deferred: list[int] = field(default_factory=list)
    data_log_lines: int | None = None  # lines of data_sequence.jsonl at the save (None: an older k2hf's save)
    data_manifest_sha256: str | None = None  # the prepared data's manifest (None: an older k2hf's save)
    spikes_lines: int | None = None  # lines of spikes.jsonl at the save (None: an older k2hf's save)
    rolled_back_lines: int | None = None  # lines of metrics_rolled_back.jsonl at the save (None: older)

    POSITION_FIELDS = ("order", "order_pos", "step_in_chunk", "skipped_rows", "resume_steps", "skip_steps",
                       "reseeds", "deferred")

    def position(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.POSITION_FIELDS}

    def chunk_trained_last(self, kind: Kind) -> int | None:
        """The chunk behind a checkpoint of ``kind``: a chunk checkpoint is written after the position moved past
        its chunk; the others inside the chunk in progress."""
        pos = self.order_pos - 1 if kind == "chunk" else self.order_pos
        return self.order[pos] if 0 <= pos < len(self.order) else None

    def to_dict(self) -> dict[str, Any]:
        """What ``trainer_state.json`` holds (fields an older k2hf did not record, and this save has not, left out)."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if v is not None or k not in self.RECORDED_SINCE}

    RECORDED_SINCE = ("spikes_lines", "rolled_back_lines")  # optional: absent from older saves

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def read(cls, checkpoint: str | os.PathLike) -> TrainerState:
        return cls.from_dict(json.loads((Path(checkpoint) / TRAINER_STATE).read_text()))

    def write(self, checkpoint: str | os.PathLike) -> None:
        """Write (and fsync) into the checkpoint folder: the last file of a save."""
        with open(Path(checkpoint) / TRAINER_STATE, "w") as f:
            f.write(json.dumps(self.to_dict(), indent=1))
            f.flush()
            os.fsync(f.fileno())


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / TRAINER_STATE).is_file()


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint. Local ones have ``path``; Hub ones have ``repo_id`` + ``revision`` (pass to
    ``from_pretrained``). ``chunk`` is the chunk trained last (for a mid-chunk checkpoint: the one in progress);
    fields a source does not record are None."""

    name: str
    kind: Kind
    number: int | None = None  # N of ckpt_N: chunks finished
    global_step: int | None = None
    tokens_seen: int | None = None
    chunk: int | None = None
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else f"{self.repo_id}@{self.revision}"

    def from_pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """``(pretrained_model_name_or_path, kwargs)`` that load exactly this checkpoint."""
        if self.path is not None:
            return str(self.path), {}
        return self.repo_id, {"revision": self.revision}

    @classmethod
    def from_folder(cls, path: Path) -> Checkpoint:
        """A complete local checkpoint of a run, described by its saved trainer state."""
        kind = kind_of(path.name)
        state = TrainerState.read(path)
        number = int(CHUNK_CHECKPOINT.match(path.name).group(1)) if kind == "chunk" else None
        return cls(name=path.name, kind=kind, number=number, global_step=state.global_step,
                   tokens_seen=state.tokens_seen, chunk=state.chunk_trained_last(kind), path=path)


__all__ = ["CHUNK_CHECKPOINT", "SPIKE_EVIDENCE", "STEP_CHECKPOINT", "TRAINER_STATE", "TRAINING_STATE_DIR",
           "Checkpoint", "Kind", "TrainerState", "chunk_checkpoint_name", "is_complete", "kind_of",
           "spike_evidence_name", "step_checkpoint_name"]
