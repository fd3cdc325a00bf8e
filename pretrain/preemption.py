"""Preemption: a cluster's warning signal (Slurm sends SIGTERM before it preempts or time-limits a job, or the
signal ``#SBATCH --signal=B:USR1@600`` asks for) becomes a clean stop at the next step boundary.

Any rank may receive the signal; the ranks agree at every step boundary (one all-reduce of a flag, so they never
disagree on where to stop), save a step checkpoint together and exit with :data:`PREEMPTED_EXIT`. Relaunching
the same command resumes from that checkpoint, bitwise as after an uninterrupted run. Lead time needed: one
optimizer step plus one checkpoint save.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

from k2hf.errors import UserError

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): "try again later", what a requeue does

logger = logging.getLogger(__name__)


class Preempted(UserError):
    """Training stopped on a preemption signal after saving a checkpoint: rerun the same command to resume."""

    exit_code = PREEMPTED_EXIT


class PreemptionWatch:
    """Catches ``signals`` while training runs (restoring the previous handlers after) and says, collectively,
    whether any rank has seen one."""

    def __init__(self, signals: list[str]) -> None:
        self.signals = [getattr(signal, name) for name in signals]
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("not the main thread: preemption signals are not caught")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def requested(self, device: torch.device) -> bool:
        """True on every rank when any rank has received a signal (a collective: every rank calls it at the same
        step boundary)."""
        flag = torch.tensor([1 if self.received else 0], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


__all__ = ["PREEMPTED_EXIT", "Preempted", "PreemptionWatch"]
