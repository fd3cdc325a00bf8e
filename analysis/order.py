"""Which chunk each checkpoint was trained on, and the reverse: for an order preset (``k2``), a prepared data
dir (its planned order) or a run dir (what the run did, rollbacks included)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from k2hf.errors import UserError
from k2hf.formats import RunDir
from k2hf.formats.prepared_data import MANIFEST
from k2hf.indices import format_index_list
from k2hf.pretrain.data.reader import PreparedData
from k2hf.release import ORDER_PRESETS, order_preset

from .run_record import RunRecord


@dataclass(frozen=True)
class CheckpointChunk:
    """``ckpt_{checkpoint}`` was trained last on ``chunk``; ``planned_chunk`` is what the plan had there (differs
    after a rollback deferred a chunk); ``global_step`` where known (run dirs)."""

    checkpoint: int
    chunk: int
    planned_chunk: int | None = None
    global_step: int | None = None

    @property
    def name(self) -> str:
        return f"ckpt_{self.checkpoint:03d}"

    def __str__(self) -> str:
        """``ckpt_003 <- chunk 3 (step 27)  [planned: chunk 2]`` (``k2hf data order``)."""
        step = f" (step {self.global_step})" if self.global_step is not None else ""
        planned = f"  [planned: chunk {self.planned_chunk}]" if self.planned_chunk not in (None, self.chunk) else ""
        return f"{self.name} <- chunk {self.chunk}{step}{planned}"


class ChunkOrder:
    """The checkpoint -> chunk table of one source, with range-checked look-ups both ways."""

    def __init__(self, entries: list[CheckpointChunk], what: str) -> None:
        self.entries, self.what = entries, what

    @classmethod
    def of(cls, source: str | os.PathLike | None = None, preset: str | None = None) -> ChunkOrder:
        if (source is None) == (preset is None):
            raise UserError("give either a source (a prepared data dir or a run dir) or --preset "
                            f"({', '.join(sorted(ORDER_PRESETS))})")
        if preset is not None:
            try:
                order = order_preset(preset)
            except KeyError as error:
                raise UserError(error.args[0]) from None
            return cls([CheckpointChunk(n, c, c) for n, c in enumerate(order, 1)], f"preset {preset}")
        path = Path(source)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory: give a prepared data dir or a pretraining run dir")
        if RunDir.is_run_dir(path):
            record = RunRecord(path)
            return cls([CheckpointChunk(c.number, c.chunk, c.planned_chunk, c.global_step)
                        for c in record.chunk_checkpoints()], f"run {path}")
        if (path / MANIFEST).is_file():
            order = PreparedData(path).chunk_order
            return cls([CheckpointChunk(n, c, c) for n, c in enumerate(order, 1)], f"data {path}")
        raise UserError(f"{path} is neither a prepared data dir (no {MANIFEST}) nor a run dir (no checkpoints/)")

    def chunk_of(self, checkpoint: int) -> CheckpointChunk:
        """The chunk behind ``ckpt_{checkpoint}`` (1-based)."""
        if not self.entries:
            raise UserError(f"{self.what} has no chunk checkpoints yet")
        if not 1 <= checkpoint <= len(self.entries) or self.entries[checkpoint - 1].checkpoint != checkpoint:
            numbers = [e.checkpoint for e in self.entries]
            raise UserError(f"checkpoint {checkpoint} does not exist in {self.what}: checkpoints are "
                            f"{min(numbers)}..{max(numbers)} (ckpt_001 is 1)")
        return self.entries[checkpoint - 1]

    def checkpoints_of(self, chunk: int) -> list[CheckpointChunk]:
        """The checkpoint(s) that finished ``chunk`` (a chunk is finished once; a rewrite after a rollback can
        leave an earlier number on disk)."""
        found = [e for e in self.entries if e.chunk == chunk]
        if not found:
            chunks = sorted(e.chunk for e in self.entries)
            raise UserError(f"no checkpoint of {self.what} finished chunk {chunk} (chunks finished: "
                            f"{format_index_list(chunks, ', ') or 'none'})")
        return found


__all__ = ["CheckpointChunk", "ChunkOrder"]
