"""The loss-spike detector: pure (numbers in, spikes out; no torch, no files), used online and offline.

K2's paper distinguishes *benign* spikes (a large, clipped gradient; the loss is back within a few steps) from
*malignant* ones (the loss stays high for 100+ steps, with small gradient norms inside the span).

The baseline is the median of the last ``window`` healthy losses, its scale the MAD (x1.4826, floored by
``min_delta / threshold``). A step whose loss exceeds ``median + threshold * scale`` (and ``median + min_delta``)
starts a spike; the baseline is frozen while it lasts. The spike is **benign** if the loss is back in the band
within ``recovery_steps`` steps of the onset, **malignant** once it has stayed elevated for ``malignant_steps``
steps; a spike that recovers later than ``recovery_steps`` but before becoming malignant is reported as benign
with ``late_recovery``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..config import SpikeSection

MAD_TO_SIGMA = 1.4826


@dataclass
class Spike:
    onset_step: int
    baseline: float
    peak_loss: float
    end_step: int
    grad_norms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    cls: str = "open"  # open -> benign | malignant
    late_recovery: bool = False

    def summary(self) -> dict:
        norms = [g for g in self.grad_norms if math.isfinite(g)]
        return {
            "onset_step": self.onset_step, "end_step": self.end_step, "duration": self.end_step - self.onset_step + 1,
            "baseline": self.baseline, "peak_loss": self.peak_loss, "class": self.cls,
            "late_recovery": self.late_recovery,
            "grad_norm_max": max(norms) if norms else None,
            "grad_norm_median": float(np.median(norms)) if norms else None,
        }


class SpikeDetector:
    """Feed ``update(step, loss, grad_norm)`` once per step; it returns a spike when one is classified."""

    def __init__(self, config: SpikeSection) -> None:
        self.config = config
        self.history: deque[float] = deque(maxlen=config.window)
        self.current: Spike | None = None
        self.spikes: list[Spike] = []

    @classmethod
    def primed(cls, config: SpikeSection, records: list[dict]) -> SpikeDetector:
        """A detector that has seen ``records`` (the curve a restored model went through) with no spike open."""
        detector = cls(config)
        for r in records:
            detector.update(r["step"], r["loss"], r["grad_norm"])
        detector.current = None  # a rollback target precedes every open spike
        return detector

    def band(self) -> tuple[float, float] | None:
        """(baseline median, upper edge of the healthy band), or None while warming up."""
        if len(self.history) < max(4, self.config.window // 2):
            return None
        values = np.fromiter(self.history, dtype=float)
        median = float(np.median(values))
        floor = self.config.min_delta / self.config.threshold
        scale = max(MAD_TO_SIGMA * float(np.median(np.abs(values - median))), floor)
        return median, median + max(self.config.threshold * scale, self.config.min_delta)

    def update(self, step: int, loss: float, grad_norm: float) -> Spike | None:
        """Returns the spike at the step it is classified: benign on recovery, malignant when it has lasted
        ``malignant_steps`` (a malignant spike is then followed to its end, for the record, without returning)."""
        band = self.band()
        spike = self.current
        if spike is None:
            if band is not None and loss > band[1]:
                self.current = Spike(step, band[0], loss, step, [grad_norm], [loss])
                return self._classify_if_long()
            self.history.append(loss)
            return None
        if band is not None and loss <= band[1]:  # back in the healthy band: the spike is over
            if spike.cls == "open":
                spike.cls = "benign"
                spike.late_recovery = step - spike.onset_step > self.config.recovery_steps
            self.current = None
            self.spikes.append(spike)
            self.history.append(loss)
            return spike if spike.cls == "benign" else None
        spike.end_step = step
        spike.peak_loss = max(spike.peak_loss, loss)
        spike.grad_norms.append(grad_norm)
        spike.losses.append(loss)
        return self._classify_if_long()

    def _classify_if_long(self) -> Spike | None:
        spike = self.current
        if spike.cls == "open" and spike.end_step - spike.onset_step + 1 >= self.config.malignant_steps:
            spike.cls = "malignant"
            return spike
        return None

    def finish(self) -> None:
        """Close a spike still open at the end of the curve (class stays open or malignant)."""
        if self.current is not None:
            self.spikes.append(self.current)
            self.current = None


def detect(records: list[dict], config: SpikeSection) -> list[dict]:
    """Run the detector over a finished curve (``step``, ``loss``, ``grad_norm`` per record)."""
    detector = SpikeDetector(config)
    for r in records:
        detector.update(int(r["step"]), float(r["loss"]), float(r.get("grad_norm", float("nan"))))
    detector.finish()
    return [s.summary() for s in detector.spikes]
