"""The data position of a pretraining run: which rows each step and rank trains on, and where the run is.

Rows are read straight from the prepared chunks in the manifest's chunk order; a global batch is ``global_rows``
consecutive rows of the current chunk, rank ``r`` taking its contiguous slice. The position is (chunk in order,
step in chunk), so resuming seeks in O(1) and replays nothing. Rows of a chunk that do not fill a last global
batch are never trained on and are recorded as such. Spike rollbacks change the position only through
:meth:`DataPosition.defer`, :meth:`DataPosition.skip` and :meth:`DataPosition.reseed`; a data fault (the spike
drill) is injected through :attr:`DataPosition.fault`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from k2hf.formats import ChunkEnd, Skip, TrainerState, TrainStep

from .config import BatchGeometry
from .data.reader import PreparedData

# chunk, this rank's row indices, their tokens -> the tokens to train on
DataFault = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Step:
    """What the next step does. ``rows`` is the global row range [start, end) of the chunk's order it takes (for
    ``chunk_end``: the rows never trained); ``row_ids`` names the rows themselves once a chunk is reseeded."""

    kind: Literal["train", "skip", "chunk_end"]
    chunk: int
    order_pos: int
    step_in_chunk: int
    rows: tuple[int, int]
    mine: np.ndarray | None = None  # this rank's row indices (train steps)
    row_ids: list[int] | None = None

    def event(self, global_step: int) -> TrainStep | Skip | ChunkEnd:
        """This step's event in the data-sequence log (``global_step``: where the run is once it is done)."""
        if self.kind == "chunk_end":
            return ChunkEnd(global_step, self.chunk, self.order_pos, rows_trained=self.rows[0],
                            rows_not_trained=self.rows, row_ids_not_trained=self.row_ids)
        if self.kind == "skip":
            return Skip(global_step, self.chunk, self.rows)
        return TrainStep(global_step, self.chunk, self.order_pos, self.rows, self.row_ids)


class DataPosition:
    """Owns the chunk order, the row selection per step and rank, skips, reseeds and deferred resumes."""

    def __init__(self, data: PreparedData, geometry: BatchGeometry, rank: int = 0) -> None:
        self.data, self.geometry, self.rank = data, geometry, rank
        self.fault: DataFault | None = None
        self.load_state_dict({"order": list(data.chunk_order)})

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The position's fields of ``trainer_state.json`` (:attr:`TrainerState.POSITION_FIELDS`)."""
        return copy.deepcopy({key: getattr(self, key) for key in TrainerState.POSITION_FIELDS})

    def load_state_dict(self, state: dict, keep_deferred: bool = False) -> None:
        """Take a saved position; ``keep_deferred`` (a rollback) keeps the record of chunks deferred so far."""
        deferred = list(self.deferred) if keep_deferred else None
        saved = TrainerState.from_dict(state).position()  # the defaults of a position saved before a field existed
        for key, value in saved.items():
            setattr(self, key, copy.deepcopy(value))
        self.deferred = deferred if deferred is not None else self.deferred
        self._cached: tuple[tuple, np.ndarray] | None = None

    # ---------------------------------------------------------------- plan
    def steps_in_chunk(self, chunk: int) -> int:
        return self.data.rows(chunk) // self.geometry.global_rows

    def planned_steps(self, max_steps: int | None = None) -> int:
        steps = sum(self.steps_in_chunk(c) for c in self.order)
        return min(steps, max_steps) if max_steps else steps

    @property
    def exhausted(self) -> bool:
        return self.order_pos >= len(self.order)

    @property
    def mid_chunk(self) -> bool:
        """Inside a chunk with steps left (a chunk's end gets its own checkpoint)."""
        return not self.exhausted and self.step_in_chunk < self.steps_in_chunk(self.order[self.order_pos])

    def next(self) -> Step | None:
        """The next step, and move past it (None once every chunk is consumed)."""
        if self.exhausted:
            return None
        chunk, sic = self.order[self.order_pos], self.step_in_chunk
        g = self.geometry
        if sic >= self.steps_in_chunk(chunk):
            used, rows = sic * g.global_rows, self.data.rows(chunk)
            if used < rows:
                self.skipped_rows.setdefault(str(chunk), []).append([used, rows])
            ids = self.row_order(chunk)[used:rows].tolist() if str(chunk) in self.reseeds else None
            step = Step("chunk_end", chunk, self.order_pos, sic, (used, rows), row_ids=ids)
            self.order_pos += 1
            following = None if self.exhausted else self.order[self.order_pos]
            self.step_in_chunk = self.resume_steps.pop(str(following), 0)
            return step
        start, end = sic * g.global_rows, (sic + 1) * g.global_rows
        self.step_in_chunk += 1
        if any(a <= sic < b for a, b in self.skip_steps.get(str(chunk), [])):
            self.skipped_rows.setdefault(str(chunk), []).append([start, end])
            return Step("skip", chunk, self.order_pos, sic, (start, end))
        order = self.row_order(chunk)
        mine = order[start + self.rank * g.rows_per_rank : start + (self.rank + 1) * g.rows_per_rank]
        ids = order[start:end].tolist() if str(chunk) in self.reseeds else None
        return Step("train", chunk, self.order_pos, sic, (start, end), mine, ids)

    def tokens(self, chunk: int, rows: np.ndarray) -> np.ndarray:
        """Token rows for row indices of a chunk, through the data fault when one is injected."""
        tokens = self.data.read_rows(chunk, rows)
        return self.fault(chunk, rows, tokens) if self.fault is not None else tokens

    def row_order(self, chunk: int) -> np.ndarray:
        """Row order inside a chunk (cached for the chunk being consumed)."""
        key = (chunk, tuple(self.reseeds.get(str(chunk), ())))
        if self._cached is None or self._cached[0] != key:
            self._cached = key, row_order(self.data.rows(chunk), self.geometry.global_rows,
                                          self.reseeds.get(str(chunk)))
        return self._cached[1]

    # ---------------------------------------------------------------- changes (spike policies)
    def defer(self, chunk: int) -> None:
        """Move ``chunk`` to the end of the order; if the position is inside it, it later resumes there."""
        here = None if self.exhausted else self.order[self.order_pos]
        self.order.append(self.order.pop(self.order.index(chunk, self.order_pos)))
        self.deferred.append(chunk)
        if here == chunk:
            if self.step_in_chunk:
                self.resume_steps[str(chunk)] = self.step_in_chunk
            following = self.order[self.order_pos]
            self.step_in_chunk = self.resume_steps.pop(str(following), 0) if following != chunk else 0

    def skip(self, chunk: int, start: int, end: int) -> None:
        """Never train steps [start, end) of ``chunk``."""
        self.skip_steps.setdefault(str(chunk), []).append([start, end])

    def reseed(self, seed: int) -> None:
        """Re-shuffle the rows of the current chunk from the current step on."""
        self.reseeds[str(self.order[self.order_pos])] = [self.step_in_chunk, seed]


def row_order(rows: int, global_rows: int, reseed: list[int] | None) -> np.ndarray:
    """Row order inside a chunk: as written (already shuffled by prepare); after a `reseed` rollback the rows
    from step ``from_step`` on are re-shuffled with the new seed (rows before it were already trained)."""
    order = np.arange(rows)
    if reseed:
        from_step, seed = reseed
        cut = from_step * global_rows
        order[cut:] = np.random.default_rng(seed).permutation(order[cut:])
    return order


def poisoned_chunk(chunk: int, vocab: int, seed: int) -> DataFault:
    """The spike drill's fault: ``chunk`` reads as uniform random tokens (a transient data fault that drives a
    malignant loss spike on purpose); other chunks are untouched."""

    def fault(at: int, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        if at != chunk:
            return tokens
        rng = np.random.default_rng([seed, chunk, int(rows[0])])
        return rng.integers(3, vocab, size=tokens.shape)

    return fault
