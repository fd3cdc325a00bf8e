"""Evaluation on EleutherAI's lm-evaluation-harness, for one checkpoint or every checkpoint of a training.

The harness's Hugging Face wrapper (``HFLM``) is handed a model instance that k2hf loaded with its own class, so
a local dir, a Hub revision (``LLM360/K2@ckpt_120``) or a run's checkpoint all evaluate the same way. Two small
offline tasks ship with k2hf (``k2hf_mc``: multiple choice scored by log-likelihood; ``k2hf_text``: perplexity)
for tests, the demo and notebooks; ``include_path`` adds the user's own task YAMLs, as the harness's CLI does.
Needs the ``eval`` extra (``pip install k2hf[eval]``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import sys
import time
from importlib import resources
from pathlib import Path

import k2hf.checkpoints as checkpoints_api
from k2hf.errors import UserError

from .checkpoint_tasks import CheckpointJob, Execution, Merged, checkpoint_identity, run_job
from .memorization import select_checkpoints

logger = logging.getLogger(__name__)

RESULTS = "results.json"
SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"
OFFLINE_TASKS = {
    "k2hf_mc": {"file": "mc.jsonl", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
                "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
    "k2hf_text": {"file": "text.jsonl", "output_type": "loglikelihood_rolling", "doc_to_text": "{{text}}",
                  "doc_to_target": "{{text}}",
                  "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]},
}


def offline_tasks_dir(folder: str | os.PathLike | None = None) -> Path:
    """Write the task YAMLs of k2hf's offline tasks (their data is package data) and return their folder.
    Written at run time because the harness reads ``data_files`` relative to the working directory."""
    import yaml

    data = resources.files("k2hf") / "sample_data" / "eval"
    folder = Path(folder) if folder else Path(os.environ.get("HF_HOME", Path.home() / ".cache")) / "k2hf-tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in OFFLINE_TASKS.items():
        task = {"task": name, "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data / spec["file"])}}, "test_split": "test",
                **{k: v for k, v in spec.items() if k != "file"}, "metadata": {"version": 1.0}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder


def _harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("evaluation needs lm-evaluation-harness: pip install 'k2hf[eval]'") from None
    return lm_eval, HFLM, TaskManager


def task_manager(tasks: list[str], include_path: list[str] | None = None):
    """The harness's task manager with k2hf's offline tasks and ``include_path``; unknown ``tasks`` stop here."""
    _, _, TaskManager = _harness()
    manager = TaskManager(include_path=[str(offline_tasks_dir()), *(include_path or [])])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown tasks {unknown}: see `lm-eval ls tasks`, or add YAMLs with --include-path")
    return manager


def evaluate_model(model, tokenizer, tasks: list[str], num_fewshot: int | None = None, limit: int | None = None,
                   include_path: list[str] | None = None, batch_size: int = 1) -> dict:
    """Run the harness on an already loaded model; returns its results dict (``results[task]["acc,none"]``)."""
    lm_eval, HFLM, _ = _harness()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    manager = task_manager(tasks, include_path)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                   log_samples=False)


def _load(source: str, checkpoint: checkpoints_api.Checkpoint | None, revision: str | None, **kwargs):
    if checkpoint is not None:
        model, tokenizer = checkpoints_api.load_with_tokenizer(source, checkpoint, **kwargs)
        return model.eval(), tokenizer
    from transformers import AutoTokenizer

    from k2hf.modeling import K2ForCausalLM

    checkpoints_api.check_model_dir(source)
    load_kwargs = {"revision": revision} if revision else {}
    model = K2ForCausalLM.from_pretrained(source, **load_kwargs, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(source, **load_kwargs)


def run_eval(model_source: str, tasks: list[str], out: str | os.PathLike, revision: str | None = None,
             num_fewshot: int | None = None, limit: int | None = None, include_path: list[str] | None = None,
             batch_size: int = 1, checkpoint: checkpoints_api.Checkpoint | None = None, **from_pretrained_kwargs
             ) -> dict:
    """``k2hf eval``: evaluate one model; writes ``OUT/results.json`` (the harness's results plus the command,
    versions and model source) and returns it."""
    model, tokenizer = _load(model_source, checkpoint, revision, **from_pretrained_kwargs)
    results = evaluate_model(model, tokenizer, tasks, num_fewshot, limit, include_path, batch_size)
    record = {
        "model": {"source": str(model_source), "revision": revision,
                  "checkpoint": checkpoint.name if checkpoint else None},
        "tasks": tasks, "num_fewshot": num_fewshot, "limit": limit, "command": sys.argv,
        "versions": _versions(), "results": results["results"],
        "n_samples": results.get("n-samples"), "configs": results.get("configs"),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).write_text(json.dumps(record, indent=1, default=str))
    return record


def results_lines(record: dict) -> str:
    """``task: metric value, ...`` per task of a harness results record (stderrs left out)."""
    lines = []
    for task, metrics in record["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4g}" for k, v in metrics.items()
                          if "," in k and isinstance(v, float) and "stderr" not in k)
        lines.append(f"{task}: {shown}")
    return "\n".join(lines)


def _versions() -> dict:
    import lm_eval
    import torch
    import transformers

    import k2hf

    return {"k2hf": k2hf.__version__, "lm_eval": getattr(lm_eval, "__version__", "?"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


class EvalSweep(CheckpointJob):
    """The harness on each checkpoint (each loaded once for all tasks); a checkpoint's full record also goes to
    ``OUT/<name>/results.json``. Merged: ``OUT/sweep.csv``, ``OUT/sweep.png`` and ``OUT/sweep.json`` (what was
    evaluated, and each failed checkpoint's reason)."""

    analysis = "eval"

    def __init__(self, source: str, out, checkpoints, tasks: list[str], num_fewshot: int | None = None,
                 limit: int | None = None, include_path: list[str] | None = None, batch_size: int = 1,
                 load_kwargs: dict | None = None) -> None:
        super().__init__(source, out, checkpoints, load_kwargs)
        self.tasks, self.num_fewshot, self.limit, self.batch_size = list(tasks), num_fewshot, limit, batch_size
        self.include_path = [str(Path(p).resolve()) for p in include_path or []]
        task_manager(self.tasks, self.include_path)  # a missing extra or an unknown task: one line, before any task

    def settings(self) -> dict:
        return {"tasks": self.tasks, "num_fewshot": self.num_fewshot, "limit": self.limit,
                "include_path": self.include_path, "batch_size": self.batch_size}

    def run_checkpoint(self, checkpoint) -> dict:
        record = run_eval(self.source, self.tasks, self.out / checkpoint.name, num_fewshot=self.num_fewshot,
                          limit=self.limit, include_path=self.include_path, batch_size=self.batch_size,
                          checkpoint=checkpoint, **self.load_kwargs)
        return {"results": record["results"]}

    def merge(self, results: dict[str, dict], failed: dict[str, str]) -> Merged:
        rows = [row for c in self.checkpoints if c.name in results for row in _sweep_rows(c, results[c.name])]
        with open(self.out / SWEEP_CSV, "w", newline="") as f:
            writer = csv.DictWriter(f, ["checkpoint", "step", "tokens_seen", "task", "metric", "value", "stderr"])
            writer.writeheader()
            writer.writerows(rows)
        (self.out / SWEEP_JSON).write_text(json.dumps(
            {"source": self.source, **self.settings(), "evaluated": list(results), "failed": failed}, indent=1))
        from .plots import plot_sweep

        plot_sweep(rows, self.out / "sweep.png")
        return Merged(self.out / SWEEP_CSV)


def sweep_checkpoints(source: str, every: int = 1, checkpoints: str = "all") -> list:
    """The checkpoints a sweep evaluates: every ``every``-th of the selection."""
    if every < 1:
        raise UserError(f"--every must be >= 1 (got {every})")
    return select_checkpoints(checkpoints_api.list_checkpoints(source), checkpoints)[every - 1 :: every]


def sweep(source: str, tasks: list[str], out: str | os.PathLike, every: int = 1, checkpoints: str = "all",
          progress: bool = True, execution: Execution | None = None, num_fewshot: int | None = None,
          limit: int | None = None, include_path: list[str] | None = None, batch_size: int = 1,
          **from_pretrained_kwargs) -> Path | None:
    """``k2hf eval sweep``: every ``every``-th checkpoint of a run dir or Hub repo, on ``execution`` (default:
    one after another in this process); finished checkpoints are skipped on a re-run. Writes ``OUT/sweep.csv``
    and a PNG of each metric against tokens seen (or checkpoint number when the source does not record tokens).
    Returns the CSV's path (None when the tasks went to Slurm); raises :class:`CheckpointsFailed` after merging
    when a checkpoint failed."""
    job = EvalSweep(source, out, sweep_checkpoints(source, every, checkpoints), tasks, num_fewshot, limit,
                    include_path, batch_size, from_pretrained_kwargs)
    return run_job(job, execution, progress).checked().path


def watch_sweep(run_dir: str | os.PathLike, tasks: list[str], out: str | os.PathLike, every: int = 1,
                poll: float = 60.0, idle_timeout: float | None = None, progress: bool = True, **options) -> Path:
    """``k2hf eval sweep RUN_DIR --watch``: evaluate each chunk checkpoint as the training writes it (a checkpoint
    is listed once its save is complete), re-merging ``sweep.csv`` after each, until the run's record says it
    ended (then the last checkpoints are evaluated too). ``idle_timeout``: give up after that many seconds without
    a new checkpoint (a run that crashed never says it ended)."""
    from k2hf.formats import RunDir

    run, evaluated, merged, last_new = RunDir(run_dir), None, None, time.monotonic()
    if Path(run_dir).is_file():
        raise UserError(f"--watch follows a training run: {run_dir} is a file, not a run dir")
    while True:
        if not RunDir.is_run_dir(run_dir):  # started beside the training, before it wrote anything
            if evaluated is None and idle_timeout is not None and time.monotonic() - last_new > idle_timeout:
                raise UserError(f"{run_dir} is not a k2hf run dir (no checkpoints/ or data_sequence.jsonl) after "
                                f"{idle_timeout:g} s: is the training writing there?")
            time.sleep(poll)
            continue
        ended = run.ended()  # read before listing: every checkpoint saved before the end is then listed
        selected = [c for c in checkpoints_api.list_checkpoints(run_dir) if c.kind == "chunk"][every - 1 :: every]
        identities = [checkpoint_identity(c) for c in selected]  # a rollback's rewritten ckpt_N is a new one
        if selected and identities != evaluated:
            merged = run_job(EvalSweep(str(run_dir), out, selected, tasks, **options), progress=progress)
            evaluated, last_new = identities, time.monotonic()
            logger.info("watch: %d checkpoint(s) evaluated; %s updated", len(selected), merged.path)
        if ended:
            if merged is None:
                raise UserError(f"{run_dir} ended without a chunk checkpoint: nothing to evaluate")
            return merged.checked().path
        if idle_timeout is not None and time.monotonic() - last_new > idle_timeout:
            raise UserError(f"no new checkpoint in {run_dir} for {idle_timeout:g} s and the run has not ended: "
                            "is it still training? (what is evaluated so far is in sweep.csv)")
        time.sleep(poll)


def _sweep_rows(checkpoint, record: dict) -> list[dict]:
    rows = []
    for task, metrics in record["results"].items():
        for key, value in metrics.items():
            metric, comma, flt = key.partition(",")  # metric keys are "acc,none"; others (alias, sample_len) not
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{flt}")
            rows.append({"checkpoint": checkpoint.name, "step": checkpoint.global_step,
                         "tokens_seen": checkpoint.tokens_seen, "task": task, "metric": metric, "value": value,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows


__all__ = ["OFFLINE_TASKS", "EvalSweep", "evaluate_model", "offline_tasks_dir", "results_lines", "run_eval", "sweep",
           "sweep_checkpoints", "task_manager", "watch_sweep"]
