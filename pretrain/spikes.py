"""Loss spikes: detect online, tell benign from malignant, roll back automatically, keep the evidence.

K2's paper distinguishes *benign* spikes (a large, clipped gradient; the loss is back within a few steps) from
*malignant* ones (the loss stays high for 100+ steps, with small gradient norms inside the span). K2 rolled back
by hand and moved the offending chunks (160, 186) to the end of the order; this module does it automatically.

Detection (one implementation, used online and by ``k2hf spikes analyze``): the baseline is the median of the
last ``window`` healthy losses, its scale the MAD (x1.4826, floored by ``min_delta / threshold``). A step whose
loss exceeds ``median + threshold * scale`` (and ``median + min_delta``) starts a spike; the baseline is frozen
while it lasts. The spike is **benign** if the loss is back in the band within ``recovery_steps`` steps of the
onset, **malignant** once it has stayed elevated for ``malignant_steps`` steps; a spike that recovers later than
``recovery_steps`` but before becoming malignant is reported as benign with ``late_recovery``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from k2hf.errors import UserError

from .checkpointing import TRAINER_STATE, TRAINING_STATE_DIR, TrainerState, complete_checkpoints, save_checkpoint
from .config import SpikeSection
from .trainer import Pretrainer

SPIKES_LOG = "spikes.jsonl"
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

    def band(self) -> tuple[float, float] | None:
        """(baseline median, upper edge of the healthy band), or None while warming up."""
        if len(self.history) < max(4, self.config.window // 2):
            return None
        values = np.fromiter(self.history, dtype=float)
        median = float(np.median(values))
        scale = max(MAD_TO_SIGMA * float(np.median(np.abs(values - median))), self.config.min_delta / self.config.threshold)
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


class SpikeAwarePretrainer(Pretrainer):
    """The pretrainer plus online spike detection and automatic rollback with a configured policy."""

    def setup(self) -> None:
        super().setup()
        self.spike_log = self.output_dir / SPIKES_LOG
        self.halted = False
        self.positions: dict[int, tuple[int, int]] = {}  # global step -> (chunk, step in chunk), on every rank
        self.accelerator.wait_for_everyone()  # rank 0 may just have truncated metrics.jsonl for a resume
        self.detector = self._primed_detector(self.state.global_step)

    def _primed_detector(self, up_to_step: int) -> SpikeDetector:
        detector = SpikeDetector(self.config.spikes)
        for r in self.metrics_records_upto(up_to_step):
            detector.update(r["step"], r["loss"], r["grad_norm"])
        detector.current = None  # a rollback target precedes every open spike
        return detector

    def metrics_records_upto(self, step: int) -> list[dict]:
        """The metrics of the steps the model state at ``step`` actually went through (all ranks read the file)."""
        return [r for r in self.metrics.read() if r["step"] <= step]

    def _done(self) -> bool:
        return self.halted or super()._done()

    def spike_spans(self) -> list[dict]:
        if not self.spike_log.is_file():
            return []
        return [json.loads(line) for line in self.spike_log.read_text().splitlines()]

    def batch_rows(self, chunk: int, rows: np.ndarray) -> np.ndarray:
        """The drill: until the run's first rollback, `drill_poison_chunk` reads as uniform random tokens (a
        transient data fault), which drives a malignant spike on purpose; every policy then recovers from it."""
        drill = self.config.spikes.drill_poison_chunk
        if drill is None or chunk != drill or self.state.rollbacks > 0:
            return super().batch_rows(chunk, rows)
        vocab = self.data.manifest["tokenizer"]["vocab"]
        rng = np.random.default_rng([self.config.seed, chunk, int(rows[0])])
        return rng.integers(3, vocab, size=(len(rows), self.data.seq_len))

    def on_step(self, record: dict) -> bool:
        self.positions[record["step"]] = (record["chunk"], self.state.step_in_chunk - 1)
        # every rank sees the same all-reduced loss, so every rank takes the same decision
        spike = self.detector.update(record["step"], record["loss"], record["grad_norm"])
        if spike is None:
            return False
        action = "none"
        if spike.cls == "malignant":
            action = self._handle_malignant(spike)
        self._log_spike(spike, action)
        return action != "none"

    def _log_spike(self, spike: Spike, action: str, **extra) -> None:
        if self.accelerator.is_main_process:
            with open(self.spike_log, "a") as f:
                f.write(json.dumps({**spike.summary(), "action": action, **extra}) + "\n")

    def _handle_malignant(self, spike: Spike) -> str:
        cfg = self.config.spikes
        state = self.state
        self.accelerator.print(f"malignant loss spike: onset step {spike.onset_step}, now {spike.end_step}")
        evidence = self._keep_evidence(spike)
        if cfg.policy == "halt" or state.rollbacks >= cfg.max_rollbacks:
            self.halted = True
            reason = "policy halt" if cfg.policy == "halt" else f"max_rollbacks ({cfg.max_rollbacks}) reached"
            self.data_log.append({"step": state.global_step, "event": "halt", "reason": reason, "evidence": evidence})
            return "halt"
        target = self._rollback_target(spike.onset_step)
        if target is None:
            self.halted = True
            self.data_log.append({"step": state.global_step, "event": "halt", "reason": "no checkpoint before onset"})
            return "halt"
        onset_pos = self._position_of_step(spike.onset_step)
        self.accelerator.load_state(str(target / TRAINING_STATE_DIR))
        restored = TrainerState.from_json((target / TRAINER_STATE).read_text())
        restored.rollbacks = state.rollbacks + 1
        restored.deferred = list(state.deferred)
        self._apply_policy(restored, spike, onset_pos)
        self.state = restored
        self.data_log.append({
            "step": state.global_step, "event": "rollback", "to_step": restored.global_step, "to": target.name,
            "onset_step": spike.onset_step, "policy": cfg.policy, "order": restored.order,
            "order_pos": restored.order_pos, "step_in_chunk": restored.step_in_chunk, "evidence": evidence,
        })
        for record in self.metrics.truncate_after(restored.global_step):  # measured: kept, marked as taken back
            self.rolled_back.append({**record, "rollback": restored.rollbacks})
        self._supersede_checkpoints_after(restored.global_step, self.output_dir / evidence)
        self.accelerator.wait_for_everyone()
        self.detector = self._primed_detector(restored.global_step)
        self.bar.n = restored.global_step
        self.total_steps = self._planned_steps(restored.order)
        self.bar.total = self.total_steps
        return f"rollback to {target.name} + {cfg.policy}"

    def _keep_evidence(self, spike: Spike) -> str:
        """Save the diverged model (like K2-Spike-1/2) and its curve under ``spikes/spike_NNN``."""
        root = self.output_dir / "spikes"
        name = f"spike_{self.state.rollbacks + 1:03d}_step_{self.state.global_step:07d}"
        save_checkpoint(self.accelerator, self.model, self.tokenizer, self.state, root, name)
        if self.accelerator.is_main_process:
            shutil.copy(self.metrics.path, root / name / "metrics_diverged.jsonl")
        return f"spikes/{name}"

    def _supersede_checkpoints_after(self, step: int, evidence: Path) -> None:
        """Checkpoints written after the rollback target belong to the diverged timeline: move them into the
        evidence (``superseded/``), so that neither a resume nor a reader takes them for the run's own."""
        if self.accelerator.is_main_process:
            for saved_step, path in complete_checkpoints(self.ckpt_root):
                if saved_step > step:
                    (evidence / "superseded").mkdir(exist_ok=True)
                    shutil.move(str(path), str(evidence / "superseded" / path.name))

    def _rollback_target(self, onset_step: int) -> Path | None:
        candidates = [(step, path) for step, path in complete_checkpoints(self.ckpt_root) if step < onset_step]
        return candidates[-1][1] if candidates else None

    def _position_of_step(self, step: int) -> tuple[int, int]:
        """(chunk, step in chunk) at which global step ``step`` was trained (in this process's memory)."""
        if step not in self.positions:
            raise RuntimeError(f"step {step} was not trained by this process; cannot place the spike")
        return self.positions[step]

    def _apply_policy(self, restored: TrainerState, spike: Spike, onset_pos: tuple[int, int]) -> None:
        policy = self.config.spikes.policy
        chunk, onset_sic = onset_pos
        here = restored.order[restored.order_pos] if restored.order_pos < len(restored.order) else None
        if policy == "defer_chunk":
            # move the chunk the spike started in to the end; if the restored position is inside it, the
            # deferred chunk later resumes where the checkpoint was
            index = restored.order.index(chunk, restored.order_pos)
            restored.order.append(restored.order.pop(index))
            restored.deferred.append(chunk)
            if here == chunk:
                if restored.step_in_chunk:
                    restored.resume_steps[str(chunk)] = restored.step_in_chunk
                nxt = restored.order[restored.order_pos]
                restored.step_in_chunk = restored.resume_steps.pop(str(nxt), 0) if nxt != chunk else 0
        elif policy == "skip_window":
            # skip, in the chunk where the spike started, the steps from its onset to where it was detected
            end_chunk, end_sic = self._position_of_step(spike.end_step)
            end = end_sic + 1 if end_chunk == chunk else self.steps_in_chunk(chunk)
            restored.skip_steps.setdefault(str(chunk), []).append([onset_sic, end])
        elif policy == "reseed":
            seed = self.config.seed + 1000 * restored.rollbacks
            restored.reseeds[str(here)] = [restored.step_in_chunk, seed]


def effective_data_sequence(log: list[dict]) -> list[dict]:
    """The steps the final model was trained on: each rollback discards the logged steps after its target."""
    steps: list[dict] = []
    for entry in log:
        if entry.get("event") == "rollback":
            steps = [s for s in steps if s["step"] <= entry["to_step"]]
        elif "rows" in entry and "event" not in entry:
            steps.append(entry)
    return steps


def load_curve(path: str | Path) -> list[dict]:
    """Step/loss/grad_norm records from a run dir (its metrics.jsonl), a JSONL file, or a CSV (e.g. W&B export)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def analyze(source: str | Path, config: SpikeSection, png: str | Path | None = None) -> tuple[list[dict], Path | None]:
    """Offline analysis: the spikes of a curve and a PNG of loss + grad norm with their spans marked. For a run dir
    the steps that spike rollbacks took back are analysed and drawn too: nothing the run measured is lost."""
    from .monitoring import ROLLED_BACK, plot_message, plot_training_curves

    source = Path(source)
    records = load_curve(source)
    rolled_back = load_curve(source / ROLLED_BACK) if source.is_dir() and (source / ROLLED_BACK).is_file() else []
    spikes = detect_with_rollbacks(records, rolled_back, config)
    if png is None:
        png = (source if source.is_dir() else source.parent) / "spikes.png"
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


__all__ = ["SpikeAwarePretrainer", "SpikeDetector", "analyze", "detect", "detect_with_rollbacks",
           "effective_data_sequence", "format_table"]
