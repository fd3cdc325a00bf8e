"""PNG plots of the research suite (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from k2hf.curves import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_score_histograms(per_checkpoint: dict[str, dict], k: int, out: Path) -> Path:
    """Distribution of memorization scores (share of rows at each score j/k), one outline per checkpoint."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    edges = (np.arange(k + 2) - 0.5) / k
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(per_checkpoint), 1)))
    for color, (name, stats) in zip(colors, per_checkpoint.items()):
        counts = np.asarray(stats["histogram"], dtype=float)
        ax.stairs(counts / max(counts.sum(), 1), edges, color=color, lw=1.5,
                  label=f"{name}: mean {stats['mean_score']:.3f}, full match {stats['full_match_rate']:.1%}")
    ax.set_xlabel(f"memorization score (greedy tokens equal to the row's, of {k})")
    ax.set_ylabel("share of sampled rows")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Memorization score distribution per checkpoint")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)
    plt.close(fig)
    return out


def plot_correlation_heatmap(names: list[str], matrix: np.ndarray, out: Path) -> Path:
    """Pearson correlation of per-row scores between checkpoints, annotated (blank where undefined)."""
    plt = _pyplot()
    size = 2.5 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(matrix[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="Pearson r of per-row scores")
    ax.set_title("Memorization: correlation between checkpoints")
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def plot_sweep(rows: list[dict], out: Path) -> Path | None:
    """One panel per (task, metric): value (with its stderr band) against tokens seen, or against the checkpoint's
    place in the sweep when the source does not record tokens (the K2 paper's Figure 4)."""
    if not rows:
        return None
    plt = _pyplot()
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["task"], row["metric"]), []).append(row)
    order = list(dict.fromkeys(r["checkpoint"] for r in rows))
    use_tokens = all(r["tokens_seen"] is not None for r in rows)
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.6 * len(series)), squeeze=False)
    for ax, ((task, metric), points) in zip(axes[:, 0], series.items()):
        x = [p["tokens_seen"] if use_tokens else order.index(p["checkpoint"]) for p in points]
        y = np.array([p["value"] for p in points], dtype=float)
        err = np.array([p["stderr"] if p["stderr"] is not None else np.nan for p in points], dtype=float)
        ax.plot(x, y, marker="o")
        if np.isfinite(err).any():
            ax.fill_between(x, y - np.nan_to_num(err), y + np.nan_to_num(err), alpha=0.2)
        ax.set_ylabel(f"{task}\n{metric}")
        if "perplexity" in metric:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if not use_tokens:
            ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
    axes[-1, 0].set_xlabel("tokens seen" if use_tokens else "checkpoint")
    axes[0, 0].set_title("Evaluation across checkpoints")
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def _percent_axes(ax, ylabel: str, title: str) -> None:
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out)
    plt.close(fig)
    return out


def plot_traced_share(names: list[str], shares: list[float], out: Path) -> Path:
    """``k2hf trace`` across checkpoints: the share of each one's output inside verbatim training spans."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(shares)), [100 * s for s in shares], marker="o")
    ax.set_xticks(range(len(shares)), names, rotation=45, ha="right")
    _percent_axes(ax, "tokens in verbatim training spans (%)", "Traced share of the output per checkpoint")
    return _save(plt, fig, out)


def plot_contamination(tasks: dict[str, dict], checkpoints: list[int], out: Path) -> Path:
    """``k2hf analyze contamination``: per task, the share of items contaminated by the data seen up to each
    checkpoint (``tasks[task]["by_checkpoint"]``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, stats in tasks.items():
        ax.step(checkpoints, [100 * stats["by_checkpoint"][str(k)] for k in checkpoints], where="post", marker=".",
                label=f"{task}: {stats['contaminated']}/{stats['items']} items")
    ax.set_xlabel("checkpoint (ckpt_N)")
    ax.legend(fontsize=8)
    _percent_axes(ax, "items contaminated (%)", "Benchmark items sharing an n-gram with the data seen so far")
    return _save(plt, fig, out)
