"""The README's main command: `k2hf demo` runs the whole story on the bundled samples, and a second run reuses it."""

import json

import pytest

from k2hf.formats import RunDir, SpikeAction, TrainerState
from k2hf.formats.prepared_data import Manifest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses(demo_run, capsys):
    from k2hf import cli

    out, first = demo_run
    assert "k2> " in first and "done." in first
    assert Manifest.read(out / "data" / "stage1").num_chunks == 4
    assert sorted(p.name for p in (out / "pretrain" / "stage1" / "checkpoints").iterdir()) == [
        "ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    stage2 = json.loads((out / "pretrain" / "stage2" / "checkpoints" / "ckpt_002" / "config.json").read_text())
    assert stage2["rope_parameters"]["rope_theta"] == 500000.0
    for png in ("pretrain/stage1/training_curves.png", "pretrain/stage1/spikes.png", "sft/sft_curves.png"):
        assert (out / png).stat().st_size > 10_000, png
    report = json.loads((out / "sft" / "packed" / "report.json").read_text())
    assert report["rows"] > 0 and (out / "sft" / "final" / "model.safetensors").is_file()
    # the drill: chunk 2 poisoned until the first rollback -> a malignant spike, rolled back, chunk 2 deferred
    stage1 = RunDir(out / "pretrain" / "stage1")
    (spike,) = [s for s in stage1.spike_records() if s["class"] == "malignant"]
    assert spike["action"] == SpikeAction("rollback", to="ckpt_002", policy="defer_chunk")
    final = TrainerState.read(stage1.checkpoints_dir / "ckpt_004")
    assert final.order == [0, 1, 3, 2] and final.rollbacks == 1
    summary = (out / "SUMMARY.md").read_text()
    assert "sft/final" in summary and "k2> " in summary and "Loss spikes: 1 malignant (rolled back)" in summary
    mtime = (out / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["demo", "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "reusing verified data" in second and "reusing SFT model" in second
    assert (out / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == mtime
    assert len(stage1.metrics.read()) == 36  # resumed at the end: no step retrained


def test_demo_data_stage_prepares_then_reuses_verified_data(tmp_path, capsys):
    """The first stage alone (fast tier): both stages' data are prepared, then reused when they verify, and
    prepared again when they do not."""
    from k2hf.demo import prepare_data
    from k2hf.pretrain.data.reader import PreparedData

    dirs = prepare_data(tmp_path)
    assert [PreparedData(d).num_chunks for d in dirs.values()] == [4, 2]
    assert [PreparedData(d).seq_len for d in dirs.values()] == [64, 128]
    first = capsys.readouterr().out
    assert first.count("[k2hf demo] preparing") == 2
    chunk = next((dirs["stage1"] / "chunks").glob("*.bin"))
    mtime = chunk.stat().st_mtime_ns
    prepare_data(tmp_path)
    assert capsys.readouterr().out.count("reusing verified data") == 2 and chunk.stat().st_mtime_ns == mtime
    chunk.write_bytes(chunk.read_bytes()[:-4])  # damaged: verification fails, the stage runs again
    prepare_data(tmp_path)
    assert "preparing stage1" in capsys.readouterr().out and PreparedData(dirs["stage1"]).verify() == []
