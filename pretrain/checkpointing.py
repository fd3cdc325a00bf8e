"""Atomic training checkpoints, named like K2's Hub revisions.

Layout of ``<output_dir>/checkpoints/ckpt_007/`` (one per chunk; ``step_0001234/`` for mid-chunk ones):

* the model in Hugging Face format (``config.json``, ``*.safetensors``, remote code) + tokenizer, so
  ``AutoModelForCausalLM.from_pretrained(ckpt)`` works on it directly;
* ``training_state/``: ``accelerator.save_state`` output (optimizer, LR scheduler, every rank's RNG, and
  DeepSpeed's partitioned states);
* ``trainer_state.json``: the trainer's counters and the data position's state, written last.

Every rank writes into ``.ckpt_007.tmp``; rank 0 renames it into place only after all ranks finished. A crash
during a save therefore leaves a ``.tmp`` dir that is never mistaken for a checkpoint, and the previous
checkpoint stays the newest complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate.logging import get_logger
from accelerate.utils import is_compiled_module

from k2hf.checkpoints import CHUNK_CHECKPOINT as _CHUNK
from k2hf.checkpoints import STEP_CHECKPOINT as _STEP
from k2hf.checkpoints import TRAINER_STATE
from k2hf.tokenizer import save_tokenizer

from .config import CheckpointSection

TRAINING_STATE_DIR = "training_state"
logger = get_logger(__name__)  # accelerate's: rank 0 only


class Checkpointer:
    """Owns the run's checkpoints: atomic saves (a collective: every rank calls), retention, resume, rollback
    targets. ``state`` is the JSON-able dict the trainer saves with each (its counters + the data position)."""

    def __init__(self, accelerator, model, tokenizer, root: Path, config: CheckpointSection) -> None:
        self.accelerator, self.model, self.tokenizer = accelerator, model, tokenizer
        self.root, self.config = root, config

    def save(self, name: str, state: dict, root: Path | None = None) -> Path:
        """Write checkpoint ``name`` atomically under ``root`` (default: the run's, which retention then trims)."""
        acc, own = self.accelerator, root is None
        root = self.root if own else root
        final, tmp = root / name, root / f".{name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / TRAINING_STATE_DIR))
        model = self.model
        if is_compiled_module(model):  # accelerate compiled it around the (DDP-)wrapped model: save its own names
            model = model._orig_mod
        state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 partitions; collective
        if acc.is_main_process:
            acc.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            if self.tokenizer is not None:
                save_tokenizer(self.tokenizer, tmp)
            _write_synced(tmp / TRAINER_STATE, json.dumps(state, indent=1))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if own:
                apply_retention(root, self.config.keep_chunk_checkpoints, self.config.keep_step_checkpoints,
                                protect={name})
        acc.wait_for_everyone()
        return final

    def resume(self) -> tuple[Path, dict] | None:
        """Remove partial saves of a crash, then load the newest complete checkpoint: ``(path, state)`` or None."""
        if self.accelerator.is_main_process:
            removed = clean_partial_saves(self.root)
            if removed:
                logger.warning("removed partial checkpoint saves from a crash: %s", removed)
        self.accelerator.wait_for_everyone()
        path = latest_checkpoint(self.root)
        return (path, self.load(path)) if path is not None else None

    def load(self, path: Path) -> dict:
        """Restore model, optimizer, schedule and RNG from ``path``; returns its saved trainer state."""
        self.accelerator.load_state(str(path / TRAINING_STATE_DIR))
        return read_state(path)

    def last_before(self, step: int) -> Path | None:
        """The newest complete checkpoint saved before global step ``step`` (a rollback target)."""
        candidates = [path for saved, path in complete_checkpoints(self.root) if saved < step]
        return candidates[-1] if candidates else None

    def supersede_after(self, step: int, into: Path) -> None:
        """Move the checkpoints saved after ``step`` (a diverged timeline) into ``into/superseded``, so that
        neither a resume nor a reader takes them for the run's own."""
        if self.accelerator.is_main_process:
            for saved, path in complete_checkpoints(self.root):
                if saved > step:
                    (into / "superseded").mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), str(into / "superseded" / path.name))


def read_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(global_step, path)`` of every complete checkpoint under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(read_state(p)["global_step"], p) for p in root.iterdir()
             if (_CHUNK.match(p.name) or _STEP.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda item: (item[0], item[1].name))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


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
