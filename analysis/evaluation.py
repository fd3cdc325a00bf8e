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
from importlib import resources
from pathlib import Path

import k2hf.checkpoints as checkpoints_api
from k2hf.errors import UserError

from .memorization import select_checkpoints

logger = logging.getLogger(__name__)

RESULTS = "results.json"
SWEEP_CSV = "sweep.csv"
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


def evaluate_model(model, tokenizer, tasks: list[str], num_fewshot: int | None = None, limit: int | None = None,
                   include_path: list[str] | None = None, batch_size: int = 1) -> dict:
    """Run the harness on an already loaded model; returns its results dict (``results[task]["acc,none"]``)."""
    lm_eval, HFLM, TaskManager = _harness()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    manager = TaskManager(include_path=[str(offline_tasks_dir()), *(include_path or [])])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown tasks {unknown}: see `lm-eval ls tasks`, or add YAMLs with --include-path")
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                   log_samples=False)


def _load(source: str, checkpoint: checkpoints_api.Checkpoint | None, revision: str | None, **kwargs):
    from transformers import AutoTokenizer

    if checkpoint is None:
        checkpoints_api.check_model_dir(source)
        name_or_path, load_kwargs = source, ({"revision": revision} if revision else {})
    else:
        name_or_path, load_kwargs = checkpoint.from_pretrained_args()
    from k2hf.modeling import K2ForCausalLM

    model = K2ForCausalLM.from_pretrained(name_or_path, **load_kwargs, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(name_or_path, **load_kwargs)


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


def sweep(source: str, tasks: list[str], out: str | os.PathLike, every: int = 1, checkpoints: str = "all",
          progress: bool = True, **eval_kwargs) -> Path:
    """``k2hf eval sweep``: every ``every``-th checkpoint of a run dir or Hub repo, each loaded once for all tasks;
    finished checkpoints (``OUT/<name>/results.json``) are skipped on a re-run. Writes ``OUT/sweep.csv`` and a PNG
    of each metric against tokens seen (or checkpoint number when the source does not record tokens)."""
    from tqdm.auto import tqdm

    if every < 1:
        raise UserError(f"--every must be >= 1 (got {every})")
    selected = select_checkpoints(checkpoints_api.list_checkpoints(source), checkpoints)[every - 1 :: every]
    out = Path(out)
    rows = []
    for checkpoint in tqdm(selected, desc="eval sweep", unit="checkpoint", disable=not progress):
        target = out / checkpoint.name
        if (target / RESULTS).is_file():
            logger.info("skipping %s: already evaluated", checkpoint.name)
            record = json.loads((target / RESULTS).read_text())
        else:
            record = run_eval(source, tasks, target, checkpoint=checkpoint, **eval_kwargs)
        rows += _sweep_rows(checkpoint, record)
    with open(out / SWEEP_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, ["checkpoint", "step", "tokens_seen", "task", "metric", "value", "stderr"])
        writer.writeheader()
        writer.writerows(rows)
    from .plots import plot_sweep

    plot_sweep(rows, out / "sweep.png")
    return out / SWEEP_CSV


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


__all__ = ["OFFLINE_TASKS", "evaluate_model", "offline_tasks_dir", "results_lines", "run_eval", "sweep"]
