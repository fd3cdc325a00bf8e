"""Atomic training checkpoints, named like K2's Hub revisions.

Layout of ``<output_dir>/checkpoints/ckpt_007/`` (one per chunk; ``step_0001234/`` for mid-chunk ones):

* the model in Hugging Face format (``config.json``, ``*.safetensors``, remote code) + tokenizer, so
  ``AutoModelForCausalLM.from_pretrained(ckpt)`` works on it directly;
* ``training_state/``: ``accelerator.save_state`` output (optimizer, LR scheduler, every rank's RNG, and
  DeepSpeed's partitioned states);
* ``trainer_state.json``: global step, data position and chunk order, written last.

Every rank writes into ``.ckpt_007.tmp``; rank 0 renames it into place only after all ranks finished. A crash
during a save therefore leaves a ``.tmp`` dir that is never mistaken for a checkpoint, and the previous
checkpoint stays the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate.utils import is_compiled_module

from k2hf.checkpoints import CHUNK_CHECKPOINT as _CHUNK
from k2hf.checkpoints import STEP_CHECKPOINT as _STEP
from k2hf.checkpoints import TRAINER_STATE
from k2hf.tokenizer import save_tokenizer

TRAINING_STATE_DIR = "training_state"


@dataclass
class TrainerState:
    """Where training is: everything besides tensors that an exact resume needs."""

    global_step: int = 0
    tokens_seen: int = 0  # tokens of every optimizer step the model state went through
    order: list[int] = field(default_factory=list)  # chunk training order (may change after a rollback)
    order_pos: int = 0  # index into ``order`` of the chunk being consumed
    step_in_chunk: int = 0  # optimizer steps already taken in that chunk
    skipped_rows: dict[str, list[list[int]]] = field(default_factory=dict)  # chunk -> row ranges never trained on
    rollbacks: int = 0
    # changes made by loss-spike rollbacks (keys are chunk indices as strings, for JSON)
    resume_steps: dict[str, int] = field(default_factory=dict)  # a deferred chunk restarts at this step
    skip_steps: dict[str, list[list[int]]] = field(default_factory=dict)  # [start, end) step ranges not trained
    reseeds: dict[str, list[int]] = field(default_factory=dict)  # [from_step, seed]: remaining rows re-shuffled
    deferred: list[int] = field(default_factory=list)
    data_log_lines: int | None = None  # lines of data_sequence.jsonl when this state was saved (resume cuts there)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        return cls(**json.loads(text))


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(global_step, path)`` of every complete checkpoint under ``root``, oldest first."""
    found = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if (_CHUNK.match(path.name) or _STEP.match(path.name)) and (path / TRAINER_STATE).is_file():
            state = TrainerState.from_json((path / TRAINER_STATE).read_text())
            found.append((state.global_step, path))
    return sorted(found, key=lambda item: (item[0], item[1].name))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(accelerator, model, tokenizer, state: TrainerState, root: Path, name: str) -> Path:
    """Write checkpoint ``name`` atomically (collective: every rank must call it)."""
    final, tmp = root / name, root / f".{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / TRAINING_STATE_DIR))
    if is_compiled_module(model):  # accelerate compiled it around the (DDP-)wrapped model: save its own names
        model = model._orig_mod
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions; collective
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        _write_synced(tmp / TRAINER_STATE, state.to_json())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def apply_retention(root: Path, keep_chunk: int | None, keep_step: int, protect: set[str] = frozenset()) -> None:
    """Delete old checkpoints beyond the configured counts (never one named in ``protect``)."""
    chunk = sorted((p for p in root.iterdir() if _CHUNK.match(p.name)), key=lambda p: p.name) if root.is_dir() else []
    step = sorted((p for p in root.iterdir() if _STEP.match(p.name)), key=lambda p: p.name) if root.is_dir() else []
    doomed = step[:-keep_step] if keep_step else step
    if keep_chunk is not None:
        doomed += chunk[:-keep_chunk] if keep_chunk else chunk
    for path in doomed:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


def clean_partial_saves(root: Path) -> list[str]:
    """Remove ``.tmp`` dirs left by a crash during a save; returns their names."""
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed
