"""Loss spikes: detector on synthetic curves, the end-to-end rollback drill for every policy, offline analysis."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import DRILL_SPIKES, train_tiny_run
from k2hf import cli
from k2hf.formats import ChunkEnd, JsonlFile, Rollback, RunDir, SpikeAction, spike_action
from k2hf.pretrain.config import SpikeSection
from k2hf.pretrain.data.reader import PreparedData
from k2hf.pretrain.spikes import analyze, detect


def _curve(n=600, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    loss = 3.0 - 0.3 * np.log1p(np.arange(n) / 50) + rng.normal(0, noise, n)
    grad = 0.5 + rng.normal(0, 0.05, n)
    return loss, grad


def _records(loss, grad):
    return [{"step": i + 1, "loss": float(a), "grad_norm": float(b)} for i, (a, b) in enumerate(zip(loss, grad))]


def test_one_step_spike_with_large_grad_norm_is_benign():
    loss, grad = _curve()
    loss[200] += 1.5
    grad[200] = 9.0
    spikes = detect(_records(loss, grad), SpikeSection())
    assert len(spikes) == 1
    s = spikes[0]
    assert (s["onset_step"], s["duration"], s["class"], s["late_recovery"]) == (201, 1, "benign", False)
    assert s["grad_norm_max"] == 9.0


def test_long_plateau_with_small_grad_norms_is_malignant():
    loss, grad = _curve()
    loss[300:450] += 0.8
    grad[300:450] = 0.2
    spikes = detect(_records(loss, grad), SpikeSection())
    assert [(s["onset_step"], s["end_step"], s["class"]) for s in spikes] == [(301, 450, "malignant")]
    assert spikes[0]["grad_norm_median"] == pytest.approx(0.2)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_but_healthy_curve_has_no_spikes(seed):
    """Per-step noise (sd 0.05), a slow +-0.1 oscillation (data-mixture drift) and the decay: no false positives."""
    loss, grad = _curve(n=3000, noise=0.05, seed=seed)
    loss += 0.1 * np.sin(np.arange(3000) * 2 * np.pi / 400)
    assert detect(_records(loss, grad), SpikeSection()) == []


def test_thresholds_are_respected():
    base, grad = _curve(noise=0.0)
    below = base.copy()
    below[300:305] += 0.09  # under min_delta = 0.1 (noise-free: the MAD floor is min_delta / threshold)
    assert detect(_records(below, grad), SpikeSection()) == []
    above = base.copy()
    above[300:305] += 0.2
    assert [s["class"] for s in detect(_records(above, grad), SpikeSection())] == ["benign"]
    config = SpikeSection(recovery_steps=20, malignant_steps=100)
    for length, expected, late in ((20, "benign", False), (21, "benign", True), (99, "benign", True),
                                   (100, "malignant", False)):
        curve = base.copy()
        curve[300 : 300 + length] += 0.5
        (spike,) = detect(_records(curve, grad), config)
        assert (spike["duration"], spike["class"], spike["late_recovery"]) == (length, expected, late), length


# ------------------------------------------------------------------ end-to-end drill (CPU, one process)

def _run(tmp: Path, data: Path, name: str, spikes: dict | None) -> Path:
    return train_tiny_run(data, tmp / name, **({"spikes": spikes} if spikes else {}))


def _dataset_loss(checkpoint: Path, data: Path) -> float:
    """Mean loss of a model over every row of the prepared data (the same rows for both runs)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    prepared = PreparedData(data)
    rows = np.concatenate([np.asarray(prepared.chunk(c).tokens) for c in range(prepared.num_chunks)])
    with torch.no_grad():
        x = torch.from_numpy(rows.astype(np.int64))
        return model(input_ids=x, labels=x).loss.item()


@pytest.fixture(scope="module")
def clean_run(sample_data, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("clean"), sample_data, "clean", None)


def test_drill_malignant_spike_rolls_back_and_defers_the_chunk(sample_data, clean_run, tmp_path):
    """How the drill injects it: `spikes.drill_poison_chunk: 2` makes chunk 2 read as uniform random tokens until
    the first rollback. Loss jumps ~2 nats above baseline and stays there -> malignant after 4 steps."""
    run = _run(tmp_path, sample_data, "drill", {**DRILL_SPIKES, "policy": "defer_chunk"})
    (event,) = JsonlFile(run / "spikes.jsonl").read()
    assert (event["onset_step"], event["end_step"], event["class"]) == (19, 22, "malignant")
    assert event["action"] == {"kind": "rollback", "to": "ckpt_002", "policy": "defer_chunk"}  # structured on disk
    assert spike_action(event) == SpikeAction("rollback", to="ckpt_002", policy="defer_chunk")
    assert event["peak_loss"] > event["baseline"] + 1.0
    # evidence: the diverged model at detection, loadable, with the curve that diverged
    evidence = run / "spikes" / "spike_001_step_0000022"
    assert json.loads((evidence / "trainer_state.json").read_text())["global_step"] == 22
    assert AutoModelForCausalLM.from_pretrained(evidence).config.model_type == "k2"
    diverged = {r["step"]: r["loss"] for r in JsonlFile(evidence / "metrics_diverged.jsonl").read()}
    assert max(diverged[s] for s in range(19, 23)) == pytest.approx(event["peak_loss"])
    # the data-sequence log records the rollback and the new order; the effective sequence is what was trained
    log = JsonlFile(run / "data_sequence.jsonl").read()
    (rollback,) = [e for e in log if e.get("event") == "rollback"]
    assert (rollback["to_step"], rollback["to"], rollback["order"], rollback["evidence"]) == (
        18, "ckpt_002", [0, 1, 3, 2], "spikes/spike_001_step_0000022")
    steps = RunDir(run).live_steps()
    assert [s.step for s in steps] == list(range(1, 37))
    assert [s.chunk for s in steps] == [0] * 9 + [1] * 9 + [3] * 9 + [2] * 9
    final = json.loads((run / "checkpoints" / "ckpt_004" / "trainer_state.json").read_text())
    assert final["order"] == [0, 1, 3, 2] and final["rollbacks"] == 1 and final["global_step"] == 36
    assert [r["step"] for r in JsonlFile(run / "metrics.jsonl").read()] == list(range(1, 37))  # diverged steps replaced
    # the run ends where a clean run does: same rows, other order; loss over all rows within 0.15 nats
    drill_loss = _dataset_loss(run / "checkpoints" / "ckpt_004", sample_data)
    clean_loss = _dataset_loss(clean_run / "checkpoints" / "ckpt_004", sample_data)
    assert abs(drill_loss - clean_loss) < 0.15, (drill_loss, clean_loss)
    assert not (clean_run / "spikes.jsonl").exists()


def test_drill_skip_window_skips_the_spike_rows(sample_data, tmp_path):
    run = _run(tmp_path, sample_data, "skip", {**DRILL_SPIKES, "policy": "skip_window"})
    log = JsonlFile(run / "data_sequence.jsonl").read()
    skips = [e for e in log if e.get("event") == "skip"]
    assert [(e["chunk"], e["rows"]) for e in skips] == [(2, [0, 2]), (2, [2, 4]), (2, [4, 6]), (2, [6, 8])]
    final = json.loads((run / "checkpoints" / "ckpt_004" / "trainer_state.json").read_text())
    assert final["global_step"] == 32 and final["skip_steps"] == {"2": [[0, 4]]}
    assert [s.chunk for s in RunDir(run).live_steps()] == [0] * 9 + [1] * 9 + [2] * 5 + [3] * 9


def test_drill_reseed_reshuffles_the_rest_of_the_chunk(sample_data, tmp_path):
    run = _run(tmp_path, sample_data, "reseed", {**DRILL_SPIKES, "policy": "reseed"})
    steps = RunDir(run).live_steps()
    chunk2 = [s for s in steps if s.chunk == 2]
    assert len(chunk2) == 9 and all(s.row_ids is not None for s in chunk2)
    ids = [i for s in chunk2 for i in s.row_ids]
    assert len(set(ids)) == 18 and set(ids) < set(range(19)) and ids != sorted(ids)  # distinct rows, new order
    (end,) = [e for e in RunDir(run).events() if isinstance(e, ChunkEnd) and e.chunk == 2]
    assert set(ids) | set(end.row_ids_not_trained) == set(range(19))


def test_drill_halt_stops_and_reports(sample_data, tmp_path):
    run = _run(tmp_path, sample_data, "halt", {**DRILL_SPIKES, "policy": "halt"})
    (event,) = JsonlFile(run / "spikes.jsonl").read()
    assert spike_action(event) == SpikeAction("halt", reason="policy halt")
    halts = [e for e in JsonlFile(run / "data_sequence.jsonl").read() if e.get("event") == "halt"]
    assert halts and halts[0]["step"] == 22 and (run / "spikes" / "spike_001_step_0000022").is_dir()
    assert max(r["step"] for r in JsonlFile(run / "metrics.jsonl").read()) == 22


def test_analyze_run_dir_and_csv(sample_data, tmp_path, capsys):
    run = _run(tmp_path, sample_data, "drill", {**DRILL_SPIKES, "policy": "defer_chunk"})
    evidence = run / "spikes" / "spike_001_step_0000022" / "metrics_diverged.jsonl"
    args = ["--window", "8", "--min-delta", "0.3", "--recovery-steps", "2", "--malignant-steps", "4"]
    assert cli.main(["spikes", "analyze", str(evidence), *args]) == 0
    out = capsys.readouterr().out
    assert "     19      22     4" in out and "malignant" in out
    assert (evidence.parent / "spikes_analysis.png").stat().st_size > 10_000
    # a W&B-style CSV export
    loss, grad = _curve()
    loss[200] += 1.5
    loss[300:450] += 0.8
    grad[300:450] = 0.2
    csv_path = tmp_path / "export.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "grad_norm"])
        writer.writeheader()
        writer.writerows(_records(loss, grad))
    assert cli.main(["spikes", "analyze", str(csv_path), "--out", str(tmp_path / "curve.png")]) == 0
    out = capsys.readouterr().out
    assert "benign" in out and "malignant" in out and (tmp_path / "curve.png").stat().st_size > 10_000


def test_rolled_back_steps_are_kept_and_analyzed(drill_run, capsys):
    """The rollback takes steps 19-22 out of metrics.jsonl (the model never kept them) but not out of the record:
    they move to metrics_rolled_back.jsonl, and `spikes analyze RUN_DIR` still finds the malignant spike there."""
    rolled = JsonlFile(drill_run / "metrics_rolled_back.jsonl").read()
    assert [(r["step"], r["rollback"], r["chunk"]) for r in rolled] == [(s, 1, 2) for s in range(19, 23)]
    evidence = drill_run / "spikes/spike_001_step_0000022/metrics_diverged.jsonl"
    diverged = {r["step"]: r["loss"] for r in JsonlFile(evidence).read()}
    assert [r["loss"] for r in rolled] == [diverged[s] for s in range(19, 23)]
    assert [r["step"] for r in JsonlFile(drill_run / "metrics.jsonl").read()] == list(range(1, 37))
    args = ["--window", "8", "--min-delta", "0.3", "--recovery-steps", "2", "--malignant-steps", "4"]
    assert cli.main(["spikes", "analyze", str(drill_run), *args]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "malignant" in x]
    assert line.split()[:3] == ["19", "22", "4"] and line.endswith("malignant (rolled back by rollback 1)")
    assert (drill_run / "spikes_analysis.png").stat().st_size > 10_000


def test_no_spikes_png_says_so(tmp_path):
    import matplotlib.image

    loss, grad = _curve(n=300)
    (tmp_path / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(loss, grad)))
    spikes, png = analyze(tmp_path / "curve.jsonl", SpikeSection())
    assert spikes == [] and png == tmp_path / "spikes_analysis.png"
    assert matplotlib.image.imread(png).shape[:2] == (150, 600)  # the one-line message, not the 3-panel curves


def test_spike_plot_titles_say_what_was_found():
    from k2hf.pretrain.spikes import spike_title

    records = _records(*_curve(n=300))
    assert spike_title([], records) == "Loss spikes: none found in 300 steps"
    found = [{"class": "benign"}, {"class": "malignant", "rolled_back": True}, {"class": "benign"}]
    assert spike_title(found, records) == "Loss spikes: 2 benign, 1 malignant (rolled back) in 300 steps"


def test_checkpoints_of_the_diverged_timeline_move_into_the_evidence(drill_run):
    """step_0000020 was written inside the spike (steps 19-22), after the rollback target (step 18): it is the
    diverged model, so the rollback moved it into the evidence. The run's own step_0000020, written after the
    rollback, was later removed by retention (the newest two step checkpoints are kept)."""
    superseded = drill_run / "spikes" / "spike_001_step_0000022" / "superseded"
    assert sorted(p.name for p in superseded.iterdir()) == ["step_0000020"]
    state = json.loads((superseded / "step_0000020" / "trainer_state.json").read_text())
    assert (state["global_step"], state["order"], state["order_pos"]) == (20, [0, 1, 2, 3], 2)
    assert not (drill_run / "checkpoints" / "step_0000020").exists()


def test_analyze_uses_the_runs_own_settings_and_writes_beside_its_files(drill_run, capsys):
    """No flags: the detector settings the run recorded at its start (the drill's window 8, min delta 0.3, ...),
    not the recipe defaults, so the run's malignant spike is found; the run's own files are left as they were."""
    start = JsonlFile(drill_run / "data_sequence.jsonl").read()[0]
    assert start["event"] == "start" and start["spikes"]["window"] == 8 and start["spikes"]["min_delta"] == 0.3
    curves = drill_run / "training_curves.png"
    before = curves.read_bytes()
    assert cli.main(["spikes", "analyze", str(drill_run)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "malignant" in x]
    assert line.split()[:3] == ["19", "22", "4"]
    assert curves.read_bytes() == before and (drill_run / "spikes_analysis.png").stat().st_size > 10_000


def test_unusable_detector_settings_are_refused(drill_run, capsys):
    assert cli.main(["spikes", "analyze", str(drill_run), "--window", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "k2hf: error: spikes.window must be at least 4 (the detector judges a loss only after 4 healthy ones), got 2")


@pytest.mark.parametrize("dies", ["after_commit", "before_commit"])
def test_a_run_killed_between_a_rollback_and_its_next_checkpoint_resumes_as_if_never_killed(
        sample_data, drill_run, tmp_path, monkeypatch, dies):
    """The rollback's decision is durable before training goes on: dying right after the rollback event (the
    commit) resumes from the target with the decision applied again (no step of the spike is trained twice);
    dying just before it replays the spike from the target. Either way the run ends bitwise as the uninterrupted
    drill run (`drill_run`, same recipe): one rollback, one spike record, the 4 diverged steps taken back once."""
    from k2hf.pretrain.monitoring import RunLogs
    from k2hf.pretrain.trainer import Pretrainer

    class Died(Exception):
        pass

    if dies == "after_commit":
        original = Pretrainer.train_step

        def train_step(self, step):
            if self.progress.rollbacks == 1:
                raise Died
            return original(self, step)

        monkeypatch.setattr(Pretrainer, "train_step", train_step)
    else:
        original = RunLogs.event

        def event(self, event):
            if type(event).__name__ == "Rollback":
                raise Died
            return original(self, event)

        monkeypatch.setattr(RunLogs, "event", event)
    out = tmp_path / "run"
    with pytest.raises(Died):
        train_tiny_run(sample_data, out, spikes=DRILL_SPIKES, checkpoint={"every_steps": 4})
    run = RunDir(out)
    assert run.latest_checkpoint().name == "ckpt_002"  # the diverged step_0000020 left with the rollback
    monkeypatch.undo()
    steps = []
    original_step = Pretrainer.train_step
    monkeypatch.setattr(Pretrainer, "train_step", lambda self, step: steps.append(step) or original_step(self, step))
    train_tiny_run(sample_data, out, spikes=DRILL_SPIKES, checkpoint={"every_steps": 4})  # the same command again
    # after the commit, the decision is applied: steps 19-36 on the new order; before it, the spike is replayed
    assert len(steps) == (18 if dies == "after_commit" else 4 + 18)
    reference = RunDir(drill_run)
    assert [(m["step"], m["loss"], m["grad_norm"]) for m in run.metrics.read()] == [
        (m["step"], m["loss"], m["grad_norm"]) for m in reference.metrics.read()]  # bitwise
    assert [(m["step"], m["loss"]) for m in run.rolled_back.read()] == [
        (m["step"], m["loss"]) for m in reference.rolled_back.read()]
    assert len(run.rolled_back.read()) == 4
    (rollback,) = [e for e in run.events() if isinstance(e, Rollback)]
    assert (rollback.to, rollback.order, rollback.rollbacks) == ("ckpt_002", [0, 1, 3, 2], 1)
    assert [s["action"] for s in run.spike_records()] == [s["action"] for s in reference.spike_records()]
    assert [s.step for s in run.live_steps()] == list(range(1, 37))
    assert [c.name for c in run.checkpoints()] == [c.name for c in reference.checkpoints()]
