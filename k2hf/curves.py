"""Training-curve PNGs (loss, grad norm, learning rate; spike spans; rolled-back steps), shared by pretraining,
SFT and the spike analysis, and a one-line PNG for when there is nothing to draw."""

from __future__ import annotations

import os
from pathlib import Path


def plot_training_curves(records: list[dict], out: Path, spans: list[dict] | None = None,
                         rolled_back: list[dict] | None = None, title: str = "K2 pretraining") -> Path | None:
    """Loss, grad norm and learning rate against step in one PNG; spike spans shaded, and the steps a rollback
    took back (``rolled_back``, tagged with ``rollback``) drawn as dashed red segments."""
    steps = [r for r in records if "loss" in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    segments: dict[int, list[dict]] = {}
    for r in rolled_back or []:
        segments.setdefault(r.get("rollback", 0), []).append(r)
    x = [r["step"] for r in steps]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, key, label in zip(axes, ("loss", "grad_norm", "lr"), ("loss", "grad norm", "learning rate")):
        ax.plot(x, [r.get(key) for r in steps], lw=1)
        for segment in segments.values():
            ax.plot([r["step"] for r in segment], [r.get(key) for r in segment], lw=1, ls="--", color="tab:red")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for span in spans or []:
            color = "tab:red" if span.get("class") == "malignant" else "tab:orange"
            ax.axvspan(span["onset_step"], span["end_step"], color=color, alpha=0.2)
    handles = []
    if spans:
        handles += [Patch(color="tab:orange", alpha=0.3, label="benign spike"),
                    Patch(color="tab:red", alpha=0.3, label="malignant spike")]
    if segments:
        handles.append(Line2D([], [], color="tab:red", ls="--", label="rolled back (diverged, not in the model)"))
    if handles:
        axes[0].legend(handles=handles, loc="best")
    axes[-1].set_xlabel("optimizer step")
    axes[0].set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)
    plt.close(fig)
    return out


def plot_message(out: Path, title: str, detail: str) -> Path:
    """A small PNG that states a result in words (e.g. that no loss spike was found), instead of a chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1.5))
    fig.text(0.5, 0.62, title, ha="center", va="center", fontsize=13)
    fig.text(0.5, 0.28, detail, ha="center", va="center", fontsize=9, color="0.35")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)
    plt.close(fig)
    return out


def save_figure(fig, out: Path) -> Path:
    """Write ``fig`` as PNG beside ``out`` and move it into place: an interrupt never leaves half a picture."""
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    fig.savefig(partial, dpi=100, format="png")
    os.replace(partial, out)
    return out
