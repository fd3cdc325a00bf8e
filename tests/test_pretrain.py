"""Pretraining: real 2-process DeepSpeed ZeRO-2/3 and DDP runs on CPU, exact resume after kill -9, atomic saves,
stage-1 -> stage-2 hand-off, and recipe errors before any compute."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import DRILL_SPIKES, REPO_ROOT
from k2hf.formats import TRAINER_STATE, DataChanged, JsonlFile, RunDir, SpikeAction, spike_action
from k2hf.pretrain.config import load_train_config
from k2hf.pretrain.data.config import load_data_config
from k2hf.pretrain.data.prepare import prepare
from k2hf.recipes import RecipeError

TRAIN_SCRIPT = str(REPO_ROOT / "pretrain" / "train.py")
# a little wider than `tiny` so that steps take long enough to be interrupted mid-run
MODEL = {"preset": "tiny", "overrides": {"vocab_size": "auto", "hidden_size": 96, "intermediate_size": 256}}


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare(load_data_config(REPO_ROOT / "pretrain/configs/data/sample.yaml"), out / "stage1", progress=False)
    prepare(load_data_config(REPO_ROOT / "pretrain/configs/data/sample_stage2.yaml"), out / "stage2", progress=False)
    return out


def _recipe(tmp: Path, data: Path, name: str = "run", **extra) -> Path:
    recipe = {
        "data": str(data),
        "output_dir": str(tmp / name),
        "global_batch_tokens": 512,
        "micro_batch_size": 2,
        "precision": "fp32",
        "seed": 42,
        "model": MODEL,
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "log": {"tensorboard": True},
    }
    recipe.update(extra)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


SLURM_SCRIPT = REPO_ROOT / "pretrain" / "slurm" / "pretrain.sbatch"


def _launch_command(engine: str, recipe: Path) -> tuple[list[str], dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if engine == "ddp":
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29512"]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / f"pretrain/accelerate/{engine}.yaml"), "--num_processes", "2", "--main_process_port",
               "29513"]
    return cmd + [TRAIN_SCRIPT, "--config", str(recipe)], env


def _launch(engine: str, recipe: Path) -> subprocess.CompletedProcess:
    cmd, env = _launch_command(engine, recipe)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _metrics(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).metrics.read()


@pytest.fixture(scope="module")
def reference_runs(sample_data, tmp_path_factory):
    """Uninterrupted 2-process runs per engine (8 steps over the 4 sample chunks)."""
    tmp = tmp_path_factory.mktemp("reference")
    runs = {}
    for engine in ("ddp", "zero2", "zero3"):
        _launch(engine, _recipe(tmp, sample_data / "stage1", name=engine))
        runs[engine] = tmp / engine
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_process_run_trains_and_checkpoints_load(reference_runs, engine):
    run = reference_runs[engine]
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-2:]) / 2 < losses[0] - 0.3, losses  # the loss decreases on the sample corpus
    assert all(0 < m["grad_norm"] < 100 for m in metrics)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "ckpt_004")
    assert type(model).__name__ == "K2ForCausalLM" and model.config.hidden_size == 96
    x = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(model(x).logits).all()
    assert (run / "training_curves.png").stat().st_size > 10_000
    assert list((run / "k2hf-pretrain").glob("events.out.tfevents.*"))  # TensorBoard


@pytest.mark.slow
def test_data_sequence_log_maps_every_step_to_rows(reference_runs, sample_data):
    from k2hf.pretrain.data.reader import PreparedData

    data = PreparedData(sample_data / "stage1")
    log = RunDir(reference_runs["zero2"]).data_sequence.read()
    steps = [r for r in log if "rows" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    expected = []
    for chunk in data.chunk_order:
        rows = data.rows(chunk)
        expected += [(chunk, [i * 8, i * 8 + 8]) for i in range(rows // 8)]
    assert [(r["chunk"], r["rows"]) for r in steps] == expected
    ends = [r for r in log if r.get("event") == "chunk_end"]
    assert [e["chunk"] for e in ends] == data.chunk_order
    assert all(e["rows_not_trained"] == [16, data.rows(e["chunk"])] for e in ends)
    state = json.loads((reference_runs["zero2"] / "checkpoints" / "ckpt_002" / TRAINER_STATE).read_text())
    assert state["global_step"] == 4 and state["order_pos"] == 2 and state["step_in_chunk"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_kill_minus_9_then_resume_is_bitwise_exact(reference_runs, sample_data, tmp_path, engine):
    recipe = _recipe(tmp_path, sample_data / "stage1", name=engine)
    cmd, env = _launch_command(engine, recipe)
    run = tmp_path / engine
    log = tmp_path / "killed_run.log"
    with open(log, "w") as output:
        process = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and len(_metrics(run)) >= 5:
            break
        assert process.poll() is None, "run ended before it could be killed:\n" + log.read_text()[-4000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(_metrics(run))
    assert killed_at < 8, "the run finished before the kill"
    resumed_from = RunDir(run).latest_checkpoint()
    assert resumed_from is not None
    _launch(engine, recipe)  # the same command again
    reference = [m["loss"] for m in _metrics(reference_runs[engine])]
    assert [m["loss"] for m in _metrics(run)] == reference  # bitwise: floats compared exactly
    assert [m["grad_norm"] for m in _metrics(run)] == [m["grad_norm"] for m in _metrics(reference_runs[engine])]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_spike_drill_rolls_back_the_same_way_under_two_processes(sample_data, tmp_path, engine):
    """The drill of tests/test_spikes.py (chunk 2 poisoned until the first rollback), launched on 2 processes:
    every rank takes the same decision from the all-reduced loss, and the run ends as the one-process run does."""
    recipe = _recipe(tmp_path, sample_data / "stage1", name=engine, global_batch_tokens=128, micro_batch_size=1,
                     model={"preset": "tiny", "overrides": {"vocab_size": "auto"}}, spikes=DRILL_SPIKES,
                     log={"tensorboard": False})
    _launch(engine, recipe)
    run = tmp_path / engine
    events = JsonlFile(run / "spikes.jsonl").read()
    (event,) = [e for e in events if e["class"] == "malignant"]
    # ZeRO-3 reduces in another order: the curve differs in the last bits and may show a benign bump, never acted on
    assert all(e["class"] == "benign" and spike_action(e).kind == "none" for e in events if e is not event)
    assert (event["onset_step"], event["end_step"], event["class"]) == (19, 22, "malignant")
    assert spike_action(event) == SpikeAction("rollback", to="ckpt_002", policy="defer_chunk")
    assert [s.chunk for s in RunDir(run).live_steps()] == [0] * 9 + [1] * 9 + [3] * 9 + [2] * 9
    final = json.loads((run / "checkpoints" / "ckpt_004" / TRAINER_STATE).read_text())
    assert (final["order"], final["rollbacks"], final["global_step"]) == ([0, 1, 3, 2], 1, 36)
    assert [m["step"] for m in _metrics(run)] == list(range(1, 37))
    assert (run / "spikes" / "spike_001_step_0000022" / "model.safetensors").is_file()  # the evidence, gathered


def _reset_accelerate():
    from k2hf.pretrain.trainer import reset_accelerate_state

    reset_accelerate_state()


def _train_in_process(recipe: Path, **overrides):
    from k2hf.pretrain.launch import run

    try:
        return run(load_train_config(recipe, overrides))
    finally:
        _reset_accelerate()


def test_crash_during_save_keeps_previous_checkpoint(sample_data, tmp_path, monkeypatch):
    from k2hf.modeling import K2ForCausalLM

    reference = _recipe(tmp_path, sample_data / "stage1", name="reference")
    _train_in_process(reference)
    recipe = _recipe(tmp_path, sample_data / "stage1", name="crashy")
    original = K2ForCausalLM.save_pretrained
    calls = {"n": 0}

    def crash_on_second_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            original(self, *args, **kwargs)  # weights written, then the process "dies" before the save completes
            raise RuntimeError("simulated crash during checkpoint save")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(K2ForCausalLM, "save_pretrained", crash_on_second_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_in_process(recipe)
    monkeypatch.setattr(K2ForCausalLM, "save_pretrained", original)
    root = tmp_path / "crashy" / "checkpoints"
    assert (root / ".ckpt_002.tmp" / "model.safetensors").is_file()  # looks half-done ...
    assert not (root / "ckpt_002").exists()
    assert RunDir(root.parent).latest_checkpoint().name == "ckpt_001"  # ... and is never taken for a checkpoint
    state = _train_in_process(recipe)
    assert state.global_step == 8 and not (root / ".ckpt_002.tmp").exists()
    assert [m["loss"] for m in _metrics(tmp_path / "crashy")] == [m["loss"] for m in _metrics(tmp_path / "reference")]


def test_stage1_to_stage2_handoff(sample_data, tmp_path):
    stage1 = _recipe(tmp_path, sample_data / "stage1", name="stage1")
    _train_in_process(stage1)
    final = tmp_path / "stage1" / "checkpoints" / "ckpt_004"
    stage2 = _recipe(tmp_path, sample_data / "stage2", name="stage2",
                     model={**MODEL, "init_from": str(final), "rope_theta": 500000, "max_position_embeddings": 512},
                     optim={"lr": 1e-3, "min_lr": 0.0, "schedule": "linear", "warmup_steps": 1})
    from k2hf.pretrain.trainer import Pretrainer

    trainer = Pretrainer(load_train_config(stage2))
    start = trainer.build_model()
    _reset_accelerate()
    stage1_model = AutoModelForCausalLM.from_pretrained(final)
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), stage1_model.state_dict().values()))
    assert start.config.rope_parameters["rope_theta"] == 500000 and start.config.max_position_embeddings == 512
    _train_in_process(stage2)
    metrics = _metrics(tmp_path / "stage2")
    assert metrics[0]["step"] == 1  # the schedule restarts
    assert metrics[0]["lr"] == pytest.approx(1e-3)  # after 1 warmup step: the new peak, not stage 1's
    assert metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # linear to zero
    lrs = [m["lr"] for m in metrics]
    assert lrs == sorted(lrs, reverse=True)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "stage2" / "checkpoints" / "ckpt_001")
    assert saved.config.rope_parameters["rope_theta"] == 500000
    data_log = (tmp_path / "stage2" / "data_sequence.jsonl").read_text()
    assert '"rows": [0, 4]' in data_log  # 4 rows of 128 tokens per step


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"global_batch_tokens": 500}, "must be a multiple of the data's seq_len"),
        ({"micro_batch_size": 3}, "not a multiple of micro_batch_size"),
        ({"model": {"preset": "tiny", "overrides": {"vocab_size": 64}}}, "model vocab_size 64 < tokenizer size"),
        ({"model": {"preset": "tiny", "overrides": {"vocab_size": "auto", "max_position_embeddings": 32}}},
         "exceeds max_position_embeddings"),
        ({"optim": {"lr": 1e-4, "min_lr": 1e-3}}, "min_lr <= optim.lr"),
        ({"optimizer": {"lr": 1}}, "unknown pretraining config keys"),
        ({"optim": {"learning_rate": 1}}, "unknown keys in `optim`"),
    ],
)
def test_bad_recipes_fail_before_compute(sample_data, tmp_path, changes, message):
    recipe = _recipe(tmp_path, sample_data / "stage1", **changes)
    with pytest.raises(RecipeError, match=message):
        _train_in_process(recipe)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_shipped_recipes_parse(tmp_path):
    for name in ("k2_65b_stage1", "k2_65b_stage2", "tiny_stage1", "tiny_stage2", "k2_1b_bench"):
        config = load_train_config(REPO_ROOT / f"pretrain/configs/{name}.yaml")
        assert config.optim.beta1 == 0.9 and config.optim.beta2 == 0.95 and config.optim.weight_decay == 0.1
    stage1 = load_train_config(REPO_ROOT / "pretrain/configs/k2_65b_stage1.yaml")
    assert (stage1.optim.lr, stage1.optim.min_lr, stage1.optim.warmup_steps, stage1.optim.schedule) == (
        1.5e-4, 1.5e-5, 2000, "cosine")
    assert stage1.global_batch_tokens == 4 * 1024 * 1024 and stage1.model.preset == "k2_65b"
    bench = load_train_config(REPO_ROOT / "pretrain/configs/k2_1b_bench.yaml")
    from k2hf.modeling import K2Config

    with torch.device("meta"):
        from k2hf.modeling import K2ForCausalLM

        one_b = K2ForCausalLM(K2Config.k2_65b(**bench.model.overrides))
    assert 0.9e9 < sum(p.numel() for p in one_b.parameters()) < 1.1e9  # ~1B (940.8M)
    assert stage1.spikes.enabled and stage1.spikes.policy == "defer_chunk"  # K2's headline lesson, on by default
    stage2 = load_train_config(REPO_ROOT / "pretrain/configs/k2_65b_stage2.yaml")
    assert stage2.spikes.enabled
    from k2hf.finetune.recipe import load_recipe
    from k2hf.formats import chunk_checkpoint_name

    sft = load_recipe(REPO_ROOT / "finetune/recipes/k2_chat_060124.yaml")  # starts from a checkpoint stage 2 writes
    assert Path(sft.model).parent == Path(stage2.output_dir) / "checkpoints"
    assert Path(sft.model).name == chunk_checkpoint_name(20)  # K2's stage 2: 20 chunks
    two_nodes = yaml.safe_load((REPO_ROOT / "pretrain/accelerate/zero3_2nodes.yaml").read_text())
    assert "main_process_ip" not in two_nodes  # node 0's address comes from the launch command
    assert (stage2.optim.lr, stage2.optim.min_lr, stage2.optim.schedule, stage2.model.rope_theta) == (
        1e-4, 0.0, "linear", 500000)


def _copy_of(data: Path, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(data, tmp / "data"))


def test_resume_onto_changed_data_is_refused_unless_allowed(sample_data, tmp_path):
    """A checkpoint records its data's manifest hash; a relaunch on re-prepared data stops with one line naming
    the manifest, and continues only on purpose (``allow_data_change``), recorded in the data log."""
    from k2hf.pretrain.data.reader import PreparedData

    data = _copy_of(sample_data / "stage1", tmp_path)
    recipe = _recipe(tmp_path, data, max_steps=4, checkpoint={"every_steps": 2})
    _train_in_process(recipe)
    state = json.loads((RunDir(tmp_path / "run").latest_checkpoint().path / TRAINER_STATE).read_text())
    assert state["data_manifest_sha256"] == PreparedData(data).manifest_sha256
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["chunk_order"] = list(reversed(manifest["chunk_order"]))  # as another recipe would prepare it
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecipeError, match=r"manifest.json changed since \w+ was saved .* "
                                               r"allow_data_change=true"):
        _train_in_process(recipe, max_steps=6)
    _train_in_process(recipe, max_steps=6, allow_data_change=True)
    events = RunDir(tmp_path / "run").events()
    changed = [e for e in events if isinstance(e, DataChanged)]
    assert len(changed) == 1 and changed[0].from_sha256 == state["data_manifest_sha256"]
    assert changed[0].to_sha256 == PreparedData(data).manifest_sha256 and changed[0].step == state["global_step"]
    assert changed[0].to_record()["from"] == state["data_manifest_sha256"]  # the keys on disk
    assert max(e.step for e in events) == 6


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_damaged_chunk_fails_at_start(sample_data, tmp_path, damage):
    data = _copy_of(sample_data / "stage1", tmp_path)
    chunk = json.loads((data / "manifest.json").read_text())["chunks"][2]["file"]
    if damage == "missing":
        (data / chunk).unlink()
        message = rf"chunk 2: .*{chunk} is missing"
    else:
        (data / chunk).write_bytes((data / chunk).read_bytes()[:-10])
        message = rf"chunk 2: .*{chunk} has \d+ bytes, its manifest says \d+"
    from k2hf.pretrain.data.reader import DataCheckError

    with pytest.raises(DataCheckError, match=message):
        _train_in_process(_recipe(tmp_path, data))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained on the way there


def test_row_read_errors_name_chunk_and_rows(sample_data):
    from k2hf.pretrain.data.reader import DataCheckError, PreparedData

    data = PreparedData(sample_data / "stage1")
    with pytest.raises(DataCheckError, match=r"reading rows \[0, 99999\] of chunk 1 \(.*\) failed"):
        data.read_rows(1, np.array([0, 99999]))


def test_ctrl_c_in_pretrain_is_one_line_exit_130_and_resumable(sample_data, tmp_path):
    # a checkpoint every step keeps the 8-step run long enough that the signal lands mid-run (with one every 2
    # steps, a fast machine once finished the run between the third metrics line and the signal)
    recipe = _recipe(tmp_path, sample_data / "stage1", checkpoint={"every_steps": 1})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # as started from a terminal: SIGINT at its default action (a shell without job control starts `cmd &` with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: a CI step run that way passes it on)
    proc = subprocess.Popen([sys.executable, "-m", "k2hf.cli", "pretrain", "--config", str(recipe)], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    said = re.findall(r"k2hf: [^\r\n]*", err)  # besides log lines and progress bars (which may stand before it)
    assert said == ["k2hf: interrupted: rerun the same command to resume"], err[-3000:]
    assert not list((tmp_path / "run").glob(".*.partial"))  # no half-written picture
    _train_in_process(recipe)  # rerun: resumes from the last checkpoint and finishes
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 10_000


def test_a_preemption_signal_stops_at_the_step_boundary_with_a_checkpoint(sample_data, tmp_path, monkeypatch):
    """SIGUSR1 arriving during step 3 (one process): the step finishes, step_0000003 is saved, training stops with
    `Preempted` (exit code 75) and the handlers are restored; the same command resumes, bitwise as a run that was
    never stopped."""
    from k2hf.pretrain.preemption import Preempted
    from k2hf.pretrain.trainer import Pretrainer

    reference = _recipe(tmp_path, sample_data / "stage1", name="reference")
    _train_in_process(reference)
    recipe = _recipe(tmp_path, sample_data / "stage1", name="run")
    original = Pretrainer.train_step

    def train_step(self, step):
        if self.progress.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm's warning would: in the middle of step 3
        return original(self, step)

    monkeypatch.setattr(Pretrainer, "train_step", train_step)
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted, match=r"preempted \(SIGUSR1\) at step 3; checkpoint step_0000003 saved: rerun") \
            as stopped:
        _train_in_process(recipe)
    assert stopped.value.exit_code == 75 and signal.getsignal(signal.SIGUSR1) is before
    run = RunDir(tmp_path / "run")
    assert run.latest_checkpoint().name == "step_0000003" and len(run.metrics.read()) == 3
    monkeypatch.undo()
    _train_in_process(recipe)  # the same command again
    assert [(m["loss"], m["grad_norm"]) for m in _metrics(tmp_path / "run")] == [
        (m["loss"], m["grad_norm"]) for m in _metrics(tmp_path / "reference")]  # bitwise


@pytest.mark.slow
@pytest.mark.parametrize("engine, signalled", [("ddp", "one rank"), ("ddp", "every rank"), ("zero3", "one rank"),
                                               ("zero3", "every rank"), ("zero3", "the launcher")])
def test_sigterm_under_two_processes_stops_together_and_resumes_bitwise(reference_runs, sample_data, tmp_path,
                                                                         engine, signalled):
    """Slurm's SIGTERM reaching one rank (or all): the ranks agree at the next step boundary (one all-reduce), save
    one step checkpoint together and exit 75; relaunching resumes bitwise like an uninterrupted run. "the
    launcher": SIGUSR1 to `accelerate launch` itself, set up as pretrain/slurm/pretrain.sbatch sets it up, which
    passes it on to the ranks and gives them its shutdown timeout to save."""
    import psutil

    recipe = _recipe(tmp_path, sample_data / "stage1", name=engine, checkpoint={"every_steps": 1})
    cmd, env = _launch_command(engine, recipe)
    if signalled == "the launcher":
        settings = subprocess.run(["bash", "-c", f"source <(grep -E '^(SIGNALS|GRACE|export PET_)' {SLURM_SCRIPT}) "
                                   "&& echo $PET_SIGNALS_TO_HANDLE $PET_SHUTDOWN_TIMEOUT"],
                                  capture_output=True, text=True, check=True).stdout.split()
        assert "SIGUSR1" in settings[0].split(",")
        env.update(PET_SIGNALS_TO_HANDLE=settings[0], PET_SHUTDOWN_TIMEOUT=settings[1])
    log = tmp_path / "preempted.log"
    with open(log, "w") as output:
        process = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    run = tmp_path / engine
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").is_file() and len(_metrics(run)) >= 2) and time.time() < deadline:
        assert process.poll() is None, "run ended before the signal:\n" + log.read_text()[-4000:]
        time.sleep(0.05)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True) if TRAIN_SCRIPT in p.cmdline()]
    assert len(workers) == 2, workers
    if signalled == "the launcher":
        process.send_signal(signal.SIGUSR1)
    for worker in {"one rank": workers[:1], "every rank": workers}.get(signalled, []):
        worker.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    text = log.read_text()
    assert re.search(r"train\.py: preempted \((SIGTERM|SIGUSR1|a signal on another rank)\) at step \d+; checkpoint "
                     r"step_\d+ saved: rerun the same command to resume", text), text[-4000:]
    stopped = RunDir(run).latest_checkpoint()
    assert stopped.global_step < 8 and len(_metrics(run)) == stopped.global_step  # one step boundary, agreed
    _launch(engine, recipe)  # the same command again
    reference = _metrics(reference_runs[engine])
    assert [m["loss"] for m in _metrics(run)] == [m["loss"] for m in reference]  # bitwise
    assert [m["grad_norm"] for m in _metrics(run)] == [m["grad_norm"] for m in reference]
