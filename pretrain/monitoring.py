"""Throughput, MFU, memory, the per-step metrics log and the training-curve PNG."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

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
    """Append-only JSONL of step records, written by one rank (``enabled``), readable by all; truncated to the
    resume step after a restart or rollback so steps are never duplicated."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_training_curves(records: list[dict], out: Path, spans: list[dict] | None = None) -> Path | None:
    """Loss, grad norm and learning rate against step in one PNG; spike spans shaded if given."""
    steps = [r for r in records if "loss" in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["step"] for r in steps]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, key, label in zip(axes, ("loss", "grad_norm", "lr"), ("loss", "grad norm", "learning rate")):
        ax.plot(x, [r.get(key) for r in steps], lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for span in spans or []:
            color = "tab:red" if span.get("class") == "malignant" else "tab:orange"
            ax.axvspan(span["onset_step"], span["end_step"], color=color, alpha=0.2)
    if spans:
        from matplotlib.patches import Patch

        axes[0].legend(handles=[Patch(color="tab:orange", alpha=0.3, label="benign spike"),
                                Patch(color="tab:red", alpha=0.3, label="malignant spike")], loc="best")
    axes[-1].set_xlabel("optimizer step")
    axes[0].set_title("K2 pretraining")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
