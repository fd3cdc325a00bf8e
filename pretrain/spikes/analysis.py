"""Offline loss-spike analysis: the spikes of a finished curve (a run dir, a JSONL or a W&B CSV export), those
inside the steps a rollback took back, a table and a plot; and the data sequence the final model trained on."""

from __future__ import annotations

from pathlib import Path

from k2hf.curves import plot_message, plot_training_curves
from k2hf.errors import UserError
from k2hf.formats import JsonlFile, RunDir

from ..config import SpikeSection
from .detector import detect


def load_curve(path: str | Path) -> list[dict]:
    """Step/loss/grad_norm records from a run dir (its metrics.jsonl), a JSONL file, or a CSV (e.g. W&B export)."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).metrics.path
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a pretraining run dir (with metrics.jsonl) or a CSV/JSONL "
                        "curve with step, loss, grad_norm")
    if path.suffix == ".csv":
        import csv

        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{"step": int(float(r["step"])), "loss": float(r["loss"]),
                 "grad_norm": float(r["grad_norm"]) if r.get("grad_norm") not in (None, "") else float("nan")}
                for r in rows]
    return JsonlFile(path).read()


def detect_with_rollbacks(records: list[dict], rolled_back: list[dict], config: SpikeSection) -> list[dict]:
    """Spikes of a run as it happened: those of the final curve, plus those inside the steps a rollback took back
    (detected on the curve up to the rollback target followed by the diverged steps; marked ``rolled_back``)."""
    spikes = [{**s, "rolled_back": False} for s in detect(records, config)]
    segments: dict[int, list[dict]] = {}
    for r in rolled_back:
        segments.setdefault(r.get("rollback", 0), []).append(r)
    for number, segment in sorted(segments.items()):
        start = min(r["step"] for r in segment)
        timeline = [r for r in records if r["step"] < start] + sorted(segment, key=lambda r: r["step"])
        spikes += [{**s, "rolled_back": True, "rollback": number}
                   for s in detect(timeline, config) if s["onset_step"] >= start]
    return sorted(spikes, key=lambda s: (s["onset_step"], s["rolled_back"]))


def recorded_spike_settings(source: str | Path) -> dict | None:
    """The spike settings a run dir recorded at its start (``None`` for a curve file, or a run from before
    runs recorded them)."""
    start = RunDir(source).start() if Path(source).is_dir() else None
    return start.spikes if start is not None else None


def analysis_settings(source: str | Path, **given) -> SpikeSection:
    """Detector settings for analysing ``source``: the run's own where it recorded them, else the recipe
    defaults; each value in ``given`` that is not ``None`` overrides (and is validated like a recipe's)."""
    recorded = recorded_spike_settings(source) or {}
    known = {f for f in SpikeSection.__dataclass_fields__}
    fields = {k: v for k, v in recorded.items() if k in known}
    fields.update({k: v for k, v in given.items() if v is not None})
    return SpikeSection(**fields)


def analyze(source: str | Path, config: SpikeSection | None = None,
            png: str | Path | None = None) -> tuple[list[dict], Path | None]:
    """Offline analysis: the spikes of a curve and a PNG of loss + grad norm with their spans marked. For a run dir
    the steps that spike rollbacks took back are analysed and drawn too: nothing the run measured is lost.
    ``config`` defaults to :func:`analysis_settings` (a run's own settings); the PNG to ``spikes_analysis.png``
    beside the source."""
    source = Path(source)
    if config is None:
        config = analysis_settings(source)
    records = load_curve(source)
    rolled_back = RunDir(source).rolled_back.read() if source.is_dir() else []
    spikes = detect_with_rollbacks(records, rolled_back, config)
    if png is None:  # beside the source: never over a file the run wrote
        png = RunDir(source).spikes_analysis_png if source.is_dir() else source.parent / RunDir.SPIKES_ANALYSIS
    if not spikes:  # say so, rather than draw the training curves once more
        detail = (f"detector: window {config.window}, threshold {config.threshold} x MAD-sigma, min delta "
                  f"{config.min_delta}; training curves: training_curves.png")
        return spikes, plot_message(Path(png), spike_title(spikes, records), detail)
    return spikes, plot_training_curves(records, Path(png), spikes, rolled_back, title=spike_title(spikes, records))


def spike_title(spikes: list[dict], records: list[dict]) -> str:
    """``Loss spikes: 1 malignant (rolled back), 2 benign in 3000 steps``, or that none was found."""
    if not spikes:
        return f"Loss spikes: none found in {len(records)} steps"
    counts = {}
    for s in spikes:
        label = s["class"] + (" (rolled back)" if s.get("rolled_back") else "")
        counts[label] = counts.get(label, 0) + 1
    return "Loss spikes: " + ", ".join(f"{n} {label}" for label, n in counts.items()) + f" in {len(records)} steps"


def format_table(spikes: list[dict]) -> str:
    header = f"{'onset':>7} {'end':>7} {'steps':>5} {'baseline':>9} {'peak':>9} {'grad max':>9} {'grad med':>9}  class"
    lines = [header]
    for s in spikes:
        lines.append(
            f"{s['onset_step']:>7} {s['end_step']:>7} {s['duration']:>5} {s['baseline']:>9.4f} {s['peak_loss']:>9.4f} "
            f"{_num(s['grad_norm_max']):>9} {_num(s['grad_norm_median']):>9}  {s['class']}"
            + (" (late recovery)" if s.get("late_recovery") else "")
            + (f" (rolled back by rollback {s['rollback']})" if s.get("rolled_back") else "")
        )
    if not spikes:
        lines.append("no spikes")
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.3f}" if value is not None else "-"
