"""Spike handling as a training callback: :class:`SpikeMonitor` watches each step's loss and grad norm and
returns an action (none, rollback, halt); the trainer carries it out through its components, and the monitor's
policy changes the restored data position only through :class:`~k2hf.pretrain.position.DataPosition`'s methods.
K2 rolled back by hand and moved the offending chunks (160, 186) to the end of the order; this does it itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import SpikeSection
from ..position import DataPosition, Step
from .detector import Spike, SpikeDetector


@dataclass(frozen=True)
class SpikeAction:
    kind: Literal["none", "rollback", "halt"] = "none"
    spike: Spike | None = None  # a spike classified at this step (benign ones come with kind "none")
    reason: str = ""


class SpikeMonitor:
    """Online detection; decides what a malignant spike calls for under ``config.policy``."""

    def __init__(self, config: SpikeSection, seed: int) -> None:
        self.config, self.seed = config, seed
        self.detector = SpikeDetector(config)
        self.positions: dict[int, tuple[int, int]] = {}  # global step -> (chunk, step in chunk), this process

    def prime(self, records: list[dict]) -> None:
        """Restart on the curve a resumed or restored model state went through."""
        self.detector = SpikeDetector.primed(self.config, records)

    def on_step(self, record: dict, step: Step, rollbacks: int) -> SpikeAction:
        """Every rank sees the same all-reduced loss, so every rank takes the same decision."""
        self.positions[record["step"]] = (step.chunk, step.step_in_chunk)
        spike = self.detector.update(record["step"], record["loss"], record["grad_norm"])
        if spike is None or spike.cls != "malignant":
            return SpikeAction("none", spike)
        if self.config.policy == "halt":
            return SpikeAction("halt", spike, "policy halt")
        if rollbacks >= self.config.max_rollbacks:
            return SpikeAction("halt", spike, f"max_rollbacks ({self.config.max_rollbacks}) reached")
        return SpikeAction("rollback", spike)

    def apply_policy(self, position: DataPosition, spike: Spike, rollbacks: int) -> None:
        """Change the restored ``position`` so that the rows that drove ``spike`` are not replayed as they were."""
        chunk, onset = self.position_of(spike.onset_step)
        if self.config.policy == "defer_chunk":
            position.defer(chunk)
        elif self.config.policy == "skip_window":  # the steps from the onset to where it was detected
            end_chunk, end = self.position_of(spike.end_step)
            position.skip(chunk, onset, end + 1 if end_chunk == chunk else position.steps_in_chunk(chunk))
        elif self.config.policy == "reseed":
            position.reseed(self.seed + 1000 * rollbacks)

    def position_of(self, step: int) -> tuple[int, int]:
        if step not in self.positions:
            raise RuntimeError(f"step {step} was not trained by this process; cannot place the spike")
        return self.positions[step]
