"""Throughput, MFU, memory, and the record files of a pretraining run (data sequence, metrics, spikes, curves)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from k2hf.curves import plot_training_curves

DATA_LOG = "data_sequence.jsonl"  # every step's chunk and rows, and every event
METRICS = "metrics.jsonl"
ROLLED_BACK = "metrics_rolled_back.jsonl"  # steps a spike rollback took back, each tagged with its `rollback` number
SPIKES_LOG = "spikes.jsonl"
CURVES = "training_curves.png"

# dense bf16 peak TFLOP/s per device, for MFU when `log.peak_tflops` is not given
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 125.0, "L40S": 362.0}


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding parameters) + attention (12 x layers x hidden x seq_len).

    The input embedding is a lookup, not a matmul; the LM head is counted (PaLM appendix B convention).
    """
    h, layers, f, v = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * f
    matmul_params = layers * per_layer + h * v
    return 6.0 * matmul_params + 12.0 * layers * h * seq_len


def device_peak_tflops(configured: float | None) -> float | None:
    if configured:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value
    return None


def peak_memory_gb() -> float:
    """Peak accelerator memory if on GPU, else this process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class JsonlLog:
    """Append-only JSONL of step records, written by one rank (``enabled``), readable by all. A resume cuts it
    back to what the checkpoint saw (:meth:`truncate_to_lines`, or :meth:`truncate_after` a step), so nothing is
    recorded twice."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line] if self.path.is_file() else []

    def line_count(self) -> int:
        return len(self._lines())

    def truncate_to_lines(self, count: int) -> None:
        if self.enabled and self.path.is_file():
            self.path.write_text("".join(line + "\n" for line in self._lines()[:count]))

    def truncate_after(self, step: int) -> list[dict]:
        """Drop the records after ``step``; returns them."""
        if not (self.enabled and self.path.is_file()):
            return []
        kept, dropped = [], []
        for line in self._lines():
            (kept if json.loads(line).get("step", 0) <= step else dropped).append(line)
        self.path.write_text("".join(line + "\n" for line in kept))
        return [json.loads(line) for line in dropped]

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self._lines()]


class RunLogs:
    """The record files of one run, written by rank 0 (``enabled``) and readable by every rank."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.dir, self.enabled = output_dir, enabled
        self.data, self.metrics = JsonlLog(output_dir / DATA_LOG, enabled), JsonlLog(output_dir / METRICS, enabled)
        self.rolled_back = JsonlLog(output_dir / ROLLED_BACK, enabled)  # kept: what rollbacks took back
        self.spikes = JsonlLog(output_dir / SPIKES_LOG, enabled)

    def start(self, order: list[int], data: str, spikes: dict) -> None:
        """A fresh start: nothing of an earlier, checkpoint-less try is kept. The start record holds the chunk
        order, the data and the spike settings (``k2hf spikes analyze RUN_DIR`` detects with the run's own)."""
        for log in (self.data, self.metrics, self.rolled_back, self.spikes):
            log.truncate_to_lines(0)
        self.data.append({"step": 0, "event": "start", "order": list(order), "data": data, "spikes": spikes})

    def resume(self, state: dict) -> None:
        """Cut the logs back to what the checkpoint's ``state`` saw, so nothing is recorded twice."""
        if state.get("data_log_lines") is not None:
            self.data.truncate_to_lines(state["data_log_lines"])
        else:  # checkpoints written before data_log_lines existed
            self.data.truncate_after(state["global_step"])
        self.metrics.truncate_after(state["global_step"])

    def take_back(self, after_step: int, rollback: int) -> None:
        """A rollback: the metrics after ``after_step`` leave the curve and are kept, tagged, in ``rolled_back``."""
        for record in self.metrics.truncate_after(after_step):
            self.rolled_back.append({**record, "rollback": rollback})

    def metrics_upto(self, step: int) -> list[dict]:
        return [r for r in self.metrics.read() if r["step"] <= step]

    def plot(self, title: str) -> Path | None:
        if not self.enabled:
            return None
        return plot_training_curves(self.metrics.read(), self.dir / CURVES, self.spikes.read(),
                                    self.rolled_back.read(), title=title)
