"""Throughput, MFU, memory, and the writer of a pretraining run's record files (data sequence, metrics, spikes,
curves), whose layout :class:`k2hf.formats.RunDir` owns."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from k2hf.curves import plot_training_curves
from k2hf.formats import Event, Rollback, RunDir, SpikeAction, Start, TrainerState, parse_event, spike_record

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


class RunLogs:
    """The record files of one run (through its :class:`~k2hf.formats.RunDir`), written by the main rank and
    readable by every rank."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.data, self.metrics, self.rolled_back, self.spikes = run.data_sequence, run.metrics, run.rolled_back, \
            run.spikes

    @property
    def enabled(self) -> bool:
        return self.run.writable

    def start(self, order: list[int], data: str, spikes: dict) -> None:
        """A fresh start: nothing of an earlier, checkpoint-less try is kept. The start record holds the chunk
        order, the data and the spike settings (``k2hf spikes analyze RUN_DIR`` detects with the run's own)."""
        for log in (self.data, self.metrics, self.rolled_back, self.spikes):
            log.truncate_to_lines(0)
        self.run.append(Start(step=0, order=list(order), data=data, spikes=spikes))

    def event(self, event: Event) -> None:
        self.run.append(event)

    def committed_rollback(self, checkpoint: str, state: TrainerState) -> tuple[int, Rollback] | None:
        """A rollback to ``checkpoint`` committed after it was saved (the run died before its next checkpoint):
        ``(line of the event, event)``, the last such one, or None."""
        if state.data_log_lines is None:
            return None
        found = None
        for line, record in enumerate(self.data.read()[state.data_log_lines:], state.data_log_lines):
            event = parse_event(record)
            if isinstance(event, Rollback) and event.to == checkpoint and event.replayable:
                found = line, event
        return found

    def resume(self, state: TrainerState, committed: tuple[int, Rollback] | None = None) -> None:
        """Cut the logs back to what the checkpoint's ``state`` saw (or, for a ``committed`` rollback to it, to the
        rollback's commit), so nothing is recorded twice."""
        if committed is not None:
            line, rollback = committed
            self.data.truncate_to_lines(line + 1)
            self.spikes.truncate_to_lines(rollback.spikes_lines)
            self.rolled_back.truncate_to_lines(rollback.rolled_back_lines)
        else:
            if state.data_log_lines is not None:
                self.data.truncate_to_lines(state.data_log_lines)
            else:  # checkpoints written before data_log_lines existed
                self.data.truncate_after(state.global_step)
            if state.spikes_lines is not None:
                self.spikes.truncate_to_lines(state.spikes_lines)
            if state.rolled_back_lines is not None:
                self.rolled_back.truncate_to_lines(state.rolled_back_lines)
        self.metrics.truncate_after(state.global_step)

    def take_back(self, after_step: int, rollback: int) -> None:
        """A rollback: the metrics after ``after_step`` leave the curve and are kept, tagged, in ``rolled_back``."""
        for record in self.metrics.truncate_after(after_step):
            self.rolled_back.append({**record, "rollback": rollback})

    def spike(self, summary: dict, action: SpikeAction) -> None:
        self.spikes.append(spike_record(summary, action))

    def metrics_upto(self, step: int) -> list[dict]:
        return [r for r in self.metrics.read() if r["step"] <= step]

    def plot(self, title: str) -> Path | None:
        if not self.enabled:
            return None
        return plot_training_curves(self.metrics.read(), self.run.curves_png, self.spikes.read(),
                                    self.rolled_back.read(), title=title)
