"""Per-checkpoint analyses as tasks (eval sweep, memorization, gallery, trace): local workers and Ray write the
same bytes as the sequential run; finished checkpoints are skipped; a failing checkpoint is reported and the others
land; Slurm dry runs; a checkpoint spread over devices with disk offload scores as it does whole; watch mode."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k2hf import cli
from k2hf.analysis.checkpoint_tasks import CheckpointJob, Execution, Merged, run_job
from k2hf.checkpoints import Checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "k2hf" / "sample_data" / "gallery"
PROMPT = "The history of"

OUTPUTS = {
    "eval": ["sweep.csv", "sweep.png", "sweep.json"],
    "memorization": ["scores.csv", "summary.json", "score_histogram.png", "score_correlation.png"],
    "gallery": ["gallery.jsonl", "gallery.html"],
    "trace": ["trace.json", "trace.html", "traced_share.png"],
}


def _commands(run: Path, index: Path | None, out: Path) -> dict[str, list[str]]:
    commands = {
        "eval": ["eval", "sweep", str(run), "--tasks", "k2hf_mc", "--limit", "6", "--out", str(out / "eval")],
        "memorization": ["analyze", "memorization", "--model", str(run), "--samples", "6", "--batch-size", "3",
                         "--prompt-tokens", "16", "--continuation-tokens", "16", "--out", str(out / "memorization")],
        "gallery": ["gallery", str(run), "--prompts", str(SAMPLES / "prompts.txt"), "--eval-items",
                    str(SAMPLES / "items.jsonl"), "--max-new-tokens", "6", "--out", str(out / "gallery")],
    }
    if index is not None:
        commands["trace"] = ["trace", "--model", str(run), "--checkpoints", "all", "--index", str(index), "--prompt",
                             PROMPT, "--max-new-tokens", "16", "--min-len", "4", "--out", str(out / "trace")]
    return commands


def _outputs(out: Path, analyses) -> dict[str, bytes]:
    return {f"{a}/{name}": (out / a / name).read_bytes() for a in analyses for name in OUTPUTS[a]}


@pytest.fixture(scope="module")
def index(sample_data, tmp_path_factory):
    """The sample data's index when infini-gram is installed (the trace analysis needs it), else None."""
    try:
        import infini_gram  # noqa: F401
    except ImportError:
        return None
    from k2hf.analysis.data_index import build_index

    out = tmp_path_factory.mktemp("index") / "index"
    build_index(sample_data, out, progress=False)
    return out


@pytest.fixture(scope="module")
def sequential(drill_run, index, tmp_path_factory):
    """Every analysis run one checkpoint after another in this process: the reference outputs."""
    out = tmp_path_factory.mktemp("sequential")
    commands = _commands(drill_run, index, out)
    for args in commands.values():
        assert cli.main(args) == 0, args
    return out, list(commands)


@pytest.mark.slow
def test_two_local_workers_write_the_sequential_runs_bytes(drill_run, index, sequential, tmp_path):
    reference, analyses = sequential
    for args in _commands(drill_run, index, tmp_path).values():
        assert cli.main([*args, "--workers", "2"]) == 0, args
    assert _outputs(tmp_path, analyses) == _outputs(reference, analyses)
    # one task per checkpoint: 4 chunk checkpoints, each result saved on its own
    assert sorted(p.name for p in (tmp_path / "memorization" / "checkpoints").glob("*.json")) == [
        f"ckpt_00{i}.json" for i in range(1, 5)]
    with open(tmp_path / "eval" / "sweep.csv") as f:
        assert [r["checkpoint"] for r in csv.DictReader(f)] == ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    summary = json.loads((tmp_path / "memorization" / "summary.json").read_text())
    assert list(summary["checkpoints"]) == ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"] and summary["failed"] == {}


@pytest.mark.slow
def test_a_local_ray_writes_the_sequential_runs_bytes(drill_run, index, sequential, tmp_path):
    pytest.importorskip("ray")
    import ray

    reference, analyses = sequential
    try:
        for args in _commands(drill_run, index, tmp_path).values():
            assert cli.main([*args, "--executor", "ray", "--workers", "2"]) == 0, args
    finally:
        ray.shutdown()
    assert _outputs(tmp_path, analyses) == _outputs(reference, analyses)


@pytest.mark.slow
def test_a_rerun_skips_finished_checkpoints_and_a_failing_one_is_reported(drill_run, sequential, tmp_path, capsys):
    """Tasks of 2 checkpoints each (--tasks 2). A checkpoint whose weights are broken fails with a one-line reason
    in the merged summary; the other three land. Mended, a rerun computes only that one, and the outputs are the
    sequential run's bytes."""
    reference, _ = sequential
    run = tmp_path / "run"
    shutil.copytree(drill_run, run)
    weights = run / "checkpoints" / "ckpt_003" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])
    out = tmp_path / "out"
    args = _commands(run, None, out)["memorization"]
    # the rows are drawn from the run's own record: the same as for drill_run, whose path the summary names
    assert cli.main([*args, "--workers", "2", "--tasks", "2"]) == 1
    err = capsys.readouterr().err
    assert "1 of 4 checkpoints failed (rerun the same command to retry them):" in err
    (reason,) = [line for line in err.splitlines() if line.startswith("  ckpt_003: ")]
    summary = json.loads((out / "memorization" / "summary.json").read_text())
    assert list(summary["checkpoints"]) == ["ckpt_001", "ckpt_002", "ckpt_004"]
    assert summary["failed"] == {"ckpt_003": reason.removeprefix("  ckpt_003: ")} and "\n" not in reason
    with open(out / "memorization" / "scores.csv") as f:
        assert {r["checkpoint"] for r in csv.DictReader(f)} == {"ckpt_001", "ckpt_002", "ckpt_004"}

    parts = out / "memorization" / "checkpoints"
    stamps = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.json")}
    weights.write_bytes(good)
    assert cli.main([*args, "--workers", "2"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.json")}
    assert {k: v for k, v in after.items() if k != "ckpt_003.json"} == stamps and "ckpt_003.json" in after
    ours, theirs = (json.loads((d / "memorization" / "summary.json").read_text()) for d in (out, reference))
    assert ours == {**theirs, "source": str(run)}
    scores = [(d / "memorization" / "scores.csv").read_bytes() for d in (out, reference)]
    assert scores[0] == scores[1]

    # a removed result is computed again, alone; other settings are never taken for finished work
    (parts / "ckpt_001.json").unlink()
    assert cli.main([*args, "--samples", "5"]) == 0
    assert all(p.stat().st_mtime_ns != after[p.name] for p in parts.glob("*.json"))  # all four: other settings


@pytest.mark.slow
def test_slurm_dry_run_prints_the_array_and_the_merge_job(drill_run, tmp_path, capsys):
    (tmp_path / "slurm.yaml").write_text("partition: gpu\ntime: '02:00:00'\nsbatch_args: {account: k2}\n")
    args = _commands(drill_run, None, tmp_path)["eval"]
    assert cli.main([*args, "--executor", "slurm", "--slurm-config", str(tmp_path / "slurm.yaml"), "--gpus-per-task",
                     "2", "--executor-tasks", "2", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    tasks, merge = (tmp_path / "eval" / ".tasks" / f"eval-{k}.slurm" for k in ("tasks", "merge"))
    assert tasks.read_text() in printed and merge.read_text() in printed
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=02:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --array=0-1",
                 "#SBATCH --account=k2", "#SBATCH --job-name=k2hf-eval"):
        assert line in tasks.read_text().splitlines(), line
    assert "#SBATCH --job-name=k2hf-eval-merge" in merge.read_text().splitlines()
    assert "--gres" not in merge.read_text() and "#SBATCH --array=0-0" in merge.read_text().splitlines()
    assert not (tmp_path / "eval" / "sweep.csv").exists()  # nothing ran
    assert cli.main([*args, "--executor", "slurm", "--slurm-gres", "gpu:a100:2", "--slurm-partition", "p",
                     "--dry-run"]) == 0
    assert "#SBATCH --gres=gpu:a100:2" in (tmp_path / "eval" / ".tasks" / "eval-tasks.slurm").read_text()
    assert cli.main([*args, "--executor", "slurm", "--slurm-config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkpoint_spread_over_devices_with_disk_offload_scores_as_whole(drill_run, tmp_path):
    """accelerate's big-model loading on CPU: --device auto with a CPU budget of half the model (the embeddings
    stay, the layers and the head go to disk) gives the whole model's memorization scores and harness results."""
    from k2hf.checkpoints import load

    size = sum(p.numel() * p.element_size() for p in load(drill_run, "ckpt_004").parameters())
    budget = f"cpu={size // 2}"
    spread = load(drill_run, "ckpt_004", device_map="auto", max_memory={"cpu": size // 2},
                  offload_folder=str(tmp_path / "probe"))
    assert spread.hf_device_map["model.embed_tokens"] == "cpu" and spread.hf_device_map["model.layers"] == "disk"
    flags = ["--device", "auto", "--max-memory", budget, "--offload-folder", str(tmp_path / "offload")]
    for name in ("memorization", "eval"):
        for where, extra in (("whole", []), ("spread", flags)):
            args = _commands(drill_run, None, tmp_path / where)[name]
            assert cli.main([*args, "--checkpoints", "4", *extra]) == 0
    with open(tmp_path / "whole" / "memorization" / "scores.csv") as f:
        theirs = list(csv.DictReader(f))
    with open(tmp_path / "spread" / "memorization" / "scores.csv") as f:
        assert list(csv.DictReader(f)) == theirs and len(theirs) == 6
    sweeps = [json.loads((tmp_path / w / "eval" / "checkpoints" / "ckpt_004.json").read_text())["result"]["results"]
              for w in ("whole", "spread")]
    assert sweeps[1] == sweeps[0]


def test_what_every_task_would_fail_on_stops_before_any_runs(drill_run, tmp_path, capsys):
    assert cli.main(["eval", "sweep", str(drill_run), "--tasks", "no_such_task", "--workers", "2", "--out",
                     str(tmp_path)]) == 2
    assert "unknown tasks ['no_such_task']" in capsys.readouterr().err and not (tmp_path / "checkpoints").exists()


def test_max_memory_needs_a_spread_and_says_its_form(drill_run, tmp_path, capsys):
    args = ["analyze", "memorization", "--model", str(drill_run), "--out", str(tmp_path)]
    assert cli.main([*args, "--max-memory", "0=70GiB"]) == 2
    assert "give --device auto with it" in capsys.readouterr().err
    assert cli.main([*args, "--device", "auto", "--max-memory", "70GiB"]) == 2
    assert "'70GiB' is not DEVICE=SIZE" in capsys.readouterr().err
    assert cli.main([*args, "--device", "auto", "--max-memory", "0=lots"]) == 2
    assert "'lots' is not a size" in capsys.readouterr().err


def _wait_for(condition, timeout: float = 300.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_watch_evaluates_each_checkpoint_of_a_training_in_another_process(sample_data, tmp_path):
    """`k2hf eval sweep RUN --watch`, started before the training (a second process) exists: it evaluates ckpt_001
    while the training is held (SIGSTOP) right after saving it, goes on as the training saves the others, stops by
    itself once the run has ended, and its sweep.csv is the one a sweep of the finished run writes."""
    import signal

    from k2hf.formats import RunDir

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({
        "data": str(sample_data), "output_dir": str(tmp_path / "run"), "global_batch_tokens": 128,
        "micro_batch_size": 1, "precision": "fp32", "seed": 42,
        "model": {"preset": "tiny", "overrides": {"vocab_size": "auto"}},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2}, "log": {"tensorboard": False}}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    watched = tmp_path / "watched"
    watch = subprocess.Popen([sys.executable, "-m", "k2hf.cli", "eval", "sweep", str(tmp_path / "run"), "--watch",
                              "--poll", "0.1", "--idle-timeout", "600", "--tasks", "k2hf_mc", "--limit", "6",
                              "--out", str(watched)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    train = subprocess.Popen([sys.executable, "-m", "k2hf.cli", "pretrain", "--config", str(recipe)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = RunDir(tmp_path / "run")
    try:
        _wait_for(lambda: (tmp_path / "run" / "checkpoints" / "ckpt_001").is_dir() or train.poll() is not None,
                  what="ckpt_001")
        train.send_signal(signal.SIGSTOP)
        assert not run.ended(), "the training ended before it could be held"
        _wait_for(lambda: (watched / "checkpoints" / "ckpt_001.json").is_file(), what="the watcher's ckpt_001")
        assert not run.ended()
        train.send_signal(signal.SIGCONT)
        assert train.wait(timeout=600) == 0, train.stderr.read()[-2000:]
        out, err = watch.communicate(timeout=600)
    finally:
        for process in (train, watch):
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
    assert watch.returncode == 0, err[-2000:]
    assert "the run has ended" in out and run.ended()
    parts = sorted((watched / "checkpoints").glob("ckpt_*.json"))
    assert [p.stem for p in parts] == ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    assert cli.main(["eval", "sweep", str(tmp_path / "run"), "--tasks", "k2hf_mc", "--limit", "6", "--out",
                     str(tmp_path / "after")]) == 0
    assert (watched / "sweep.csv").read_bytes() == (tmp_path / "after" / "sweep.csv").read_bytes()


def test_a_run_has_ended_when_its_record_says_so(tmp_path):
    from k2hf.formats import End, JsonlFile, RunDir, TrainStep

    run = RunDir(tmp_path, writable=True)
    assert not run.ended()
    run.append(TrainStep(1, chunk=0, order_pos=0, rows=(0, 2)))
    assert not run.ended()
    run.append(End(1, "data"))
    assert run.ended() and run.events()[-1] == End(1, "data")
    with open(run.data_sequence.path, "a") as f:  # a record still being written does not count
        f.write('{"step": 2, "chunk": 0, "ord')
    assert run.ended()
    log = JsonlFile(tmp_path / "long.jsonl")
    for i in range(5000):
        log.append({"step": i, "pad": "x" * 40})
    assert log.last(block=256) == {"step": 4999, "pad": "x" * 40}


class VisibleDevicesJob(CheckpointJob):
    """A per-checkpoint job of the test's own: each checkpoint's result is the GPUs its task was given."""

    analysis = "visible"

    def __init__(self, out: Path, checkpoints: int) -> None:
        super().__init__("models", out, [Checkpoint(name=f"m{i}", kind="model", path=out / f"m{i}")
                                         for i in range(checkpoints)])

    def settings(self) -> dict:
        return {}

    def run_checkpoint(self, checkpoint) -> dict:
        time.sleep(0.2)  # long enough for both workers to take tasks
        return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}

    def merge(self, results, failed) -> Merged:
        (self.out / "visible.json").write_text(json.dumps(results))
        return Merged(self.out / "visible.json", value=results)


@pytest.mark.slow
def test_each_local_task_gets_its_own_gpus_in_a_fresh_process(tmp_path):
    """--workers 2 --gpus-per-task 2: a task on worker slot i sees GPUs 2i and 2i+1 (as Slurm's gres and Ray's
    num_gpus give each task its own), in a process of its own (CUDA reads CUDA_VISIBLE_DEVICES once per process);
    this process's environment is left alone, and the sequential run uses this process as it is."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    results = run_job(VisibleDevicesJob(tmp_path / "w", 4), Execution(workers=2, gpus_per_task=2),
                      progress=False).checked().value
    assert sorted(results) == [f"m{i}" for i in range(4)]
    assert {r["visible"] for r in results.values()} <= {"0,1", "2,3"}
    pids = [r["pid"] for r in results.values()]
    assert len(set(pids)) == 4 and os.getpid() not in pids
    # --tasks 2 with one worker: slot 0's GPUs, each task in its own process
    results = run_job(VisibleDevicesJob(tmp_path / "t", 2), Execution(tasks=2, gpus_per_task=2), progress=False).value
    assert {r["visible"] for r in results.values()} == {"0,1"} and len({r["pid"] for r in results.values()}) == 2
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
    results = run_job(VisibleDevicesJob(tmp_path / "s", 2), Execution(gpus_per_task=2), progress=False).value
    assert {r["visible"] for r in results.values()} == {before}
    assert {r["pid"] for r in results.values()} == {os.getpid()}
