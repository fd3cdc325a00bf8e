"""Energy and carbon of a training (K2 paper, section 5): ``Wh = GPU-hours x kW per GPU x PUE``,
``tCO2eq = MWh x t per MWh``.

The defaults are the K2 paper's factors: A100 at 0.34 kW, PUE 1.1, 0.385 tCO2eq per MWh. From them, K2's ~100
days on 480 GPUs are 430.8 MWh and 165.9 tCO2eq. For a k2hf run the GPU-hours come from its own step records
(each step's seconds x processes), and the steps that spike rollbacks took back are reported apart, as the paper
reports the 30 days of loss-spike handling apart.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass

from k2hf.errors import UserError
from k2hf.formats import JsonlFile, RunDir

K2_KW_PER_GPU = 0.34  # A100 (K2 paper)
K2_PUE = 1.1
K2_T_PER_MWH = 0.385


@dataclass(frozen=True)
class Energy:
    """One estimate: GPU-hours and the factors, with the energy (MWh) and carbon (tCO2eq) they give."""

    gpu_hours: float
    kw_per_gpu: float = K2_KW_PER_GPU
    pue: float = K2_PUE
    t_per_mwh: float = K2_T_PER_MWH

    @property
    def mwh(self) -> float:
        return self.gpu_hours * self.kw_per_gpu * self.pue / 1000

    @property
    def tco2eq(self) -> float:
        return self.mwh * self.t_per_mwh

    def to_dict(self) -> dict:
        return {**asdict(self), "mwh": self.mwh, "tco2eq": self.tco2eq}

    def factors_line(self) -> str:
        return f"factors: {self.kw_per_gpu} kW per GPU, PUE {self.pue}, {self.t_per_mwh} tCO2eq per MWh"

    def report(self) -> str:
        """The factors and the estimate as the K2 paper reports one: carbon from the MWh as rounded to 0.1 (its
        10.8 MWh x 0.385 = 4.2 t; the properties keep full precision)."""
        mwh = round(self.mwh, 1)
        return (f"{self.factors_line()}\n"
                f"{self.gpu_hours:,.1f} GPU-hours: {mwh:,.1f} MWh, {mwh * self.t_per_mwh:,.1f} tCO2eq")


@dataclass(frozen=True)
class RunEnergy:
    """A run's energy: ``trained`` (the steps of the final model's history), ``rolled_back`` (the steps spike
    rollbacks took back, reported apart as the K2 paper reports its spike handling) and their ``total``."""

    trained: Energy
    rolled_back: Energy
    steps: int
    rolled_back_steps: int

    @property
    def total(self) -> Energy:
        return dataclasses.replace(self.trained, gpu_hours=self.trained.gpu_hours + self.rolled_back.gpu_hours)

    def report(self) -> str:
        lines = [self.trained.factors_line()]
        for energy, label in ((self.trained, f"steps kept ({self.steps})"),
                              (self.rolled_back, f"steps rolled back by spike handling ({self.rolled_back_steps})"),
                              (self.total, "total")):
            lines.append(f"{label:<48} {energy.gpu_hours:>12.6f} GPU-hours {energy.mwh:>12.9f} MWh "
                         f"{energy.tco2eq:>12.9f} tCO2eq")
        return "\n".join(lines)


def gpu_hours(gpus: int | None = None, days: float | None = None, hours: float | None = None) -> float:
    """``gpus x days x 24`` or ``hours`` given directly (``--gpu-hours``)."""
    if hours is not None:
        if gpus is not None or days is not None:
            raise UserError("give either --gpu-hours, or --gpus with --days")
        if hours < 0:
            raise UserError(f"--gpu-hours must be >= 0 (got {hours})")
        return float(hours)
    if gpus is None or days is None:
        raise UserError("give --gpus and --days (or --gpu-hours), or a run dir")
    if gpus < 1 or days < 0:
        raise UserError(f"--gpus must be >= 1 and --days >= 0 (got {gpus}, {days})")
    return gpus * days * 24.0


def run_energy(run_dir: str | os.PathLike, **factors: float) -> RunEnergy:
    """A run's energy from its step records. Device time of the steps only: start-up and checkpoint saves are not
    in it."""
    run = RunDir(run_dir)
    if not run.metrics.exists():
        raise UserError(f"{run.path} has no {RunDir.METRICS}: give a pretraining run dir")
    trained, kept_steps = _device_hours(run.metrics)
    rolled_back, rolled_steps = _device_hours(run.rolled_back)
    return RunEnergy(Energy(trained, **factors), Energy(rolled_back, **factors), kept_steps, rolled_steps)


def _device_hours(log: JsonlFile) -> tuple[float, int]:
    records = log.read()
    missing = [r["step"] for r in records if "seconds" not in r]
    if missing:
        raise UserError(f"{log.path} has steps without timing (written by an older k2hf, e.g. step {missing[0]}): "
                        "estimate with --gpus and --days instead")
    return sum(r["seconds"] * r.get("processes", 1) for r in records) / 3600.0, len(records)


__all__ = ["Energy", "K2_KW_PER_GPU", "K2_PUE", "K2_T_PER_MWH", "RunEnergy", "gpu_hours", "run_energy"]
