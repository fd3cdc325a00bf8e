"""Atomic training checkpoints, named like K2's Hub revisions (``ckpt_007`` per chunk, ``step_0001234``
mid-chunk; names, layout and ``trainer_state.json`` are :mod:`k2hf.formats.checkpoint`'s).

Every rank writes into ``.ckpt_007.tmp``; rank 0 renames it into place only after all ranks finished. A crash
during a save therefore leaves a ``.tmp`` dir that is never mistaken for a checkpoint, and the previous
checkpoint stays the newest complete one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate.logging import get_logger
from accelerate.utils import is_compiled_module

from k2hf.formats import CHUNK_CHECKPOINT, STEP_CHECKPOINT, TRAINING_STATE_DIR, RunDir, TrainerState
from k2hf.tokenizer import save_tokenizer

from .config import CheckpointSection

logger = get_logger(__name__)  # accelerate's: rank 0 only


class Checkpointer:
    """Owns the run's checkpoints: atomic saves (a collective: every rank calls), retention, resume, rollback
    targets. ``state`` is what the trainer saves with each (its counters + the data position)."""

    def __init__(self, accelerator, model, tokenizer, run: RunDir, config: CheckpointSection) -> None:
        self.accelerator, self.model, self.tokenizer = accelerator, model, tokenizer
        self.run, self.root, self.config = run, run.checkpoints_dir, config

    def save(self, name: str, state: TrainerState, root: Path | None = None) -> Path:
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
            state.write(tmp)  # last: a folder with it is complete
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

    def resume(self) -> tuple[Path, TrainerState] | None:
        """Remove partial saves of a crash, then load the newest complete checkpoint: ``(path, state)`` or None."""
        if self.accelerator.is_main_process:
            removed = clean_partial_saves(self.root)
            if removed:
                logger.warning("removed partial checkpoint saves from a crash: %s", removed)
        self.accelerator.wait_for_everyone()
        latest = self.run.latest_checkpoint()
        return (latest.path, self.load(latest.path)) if latest is not None else None

    def load(self, path: Path) -> TrainerState:
        """Restore model, optimizer, schedule and RNG from ``path``; returns its saved trainer state."""
        self.accelerator.load_state(str(path / TRAINING_STATE_DIR))
        return TrainerState.read(path)

    def last_before(self, step: int) -> Path | None:
        """The newest complete checkpoint saved before global step ``step`` (a rollback target)."""
        candidates = [c.path for c in self.run.training_checkpoints() if c.global_step < step]
        return candidates[-1] if candidates else None

    def supersede_after(self, step: int, into: Path) -> None:
        """Move the checkpoints saved after ``step`` (a diverged timeline) into ``into/superseded``, so that
        neither a resume nor a reader takes them for the run's own."""
        if self.accelerator.is_main_process:
            for checkpoint in self.run.training_checkpoints():
                if checkpoint.global_step > step:
                    superseded = into / RunDir.SUPERSEDED
                    superseded.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(checkpoint.path), str(superseded / checkpoint.name))


def apply_retention(root: Path, keep_chunk: int | None, keep_step: int, protect: set[str] = frozenset()) -> None:
    """Delete old checkpoints beyond the configured counts (never one named in ``protect``)."""
    names = sorted(root.iterdir(), key=lambda p: p.name) if root.is_dir() else []
    chunk = [p for p in names if CHUNK_CHECKPOINT.match(p.name)]
    step = [p for p in names if STEP_CHECKPOINT.match(p.name)]
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
