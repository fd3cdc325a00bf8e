"""Benchmark contamination: which items share an n-gram with the training data, and from which checkpoint on.

An item is contaminated when any ``n`` consecutive tokens of its text (13 by default, the n of GPT-3's and
lm-evaluation-harness's decontamination, here in the data's own tokens rather than words) occur in a training row;
an item shorter than ``n`` tokens counts when all of it occurs. Its first checkpoint is the earliest first
checkpoint of any of its matched n-grams (each located in the data).

Items come from a JSONL file (``{"id", "text"}``) or lm-evaluation-harness task definitions (the ``eval`` extra):
each test (else validation) document's decontamination query where the task defines one, else its prompt text.
Output: ``contamination.json``, ``contamination.csv`` (one row per item) and ``contamination.png`` (contaminated
share per task against checkpoint).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from k2hf.errors import UserError
from k2hf.records import Rejection, read_records

from .plots import plot_contamination
from .search import DataSearch

CONTAMINATION_JSON = "contamination.json"
CONTAMINATION_CSV = "contamination.csv"
CONTAMINATION_PNG = "contamination.png"


@dataclass
class ItemResult:
    task: str
    id: str
    contaminated: bool
    first_checkpoint: int | None
    ngrams: int  # n-grams in the item (1 for an item shorter than n)
    matched_ngrams: int


def read_items(path: str | os.PathLike) -> list[dict]:
    """JSONL items ``{"id", "text"}`` (``id`` defaults to the line number); a bad line stops with its number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: give JSONL items with `id` and `text`")
    items = []
    for item in read_records(str(path), "jsonl"):
        if isinstance(item, Rejection):
            if item.reason == "empty_record":
                continue
            raise UserError(item.message())
        line, row = item
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise UserError(f"{path} line {line + 1}: an item needs a non-empty string `text`")
        items.append({"id": str(row.get("id", line + 1)), "text": row["text"]})
    return items


def task_items(tasks: list[str], include_path: list[str] | None = None, limit: int | None = None
               ) -> dict[str, list[dict]]:
    """Items of lm-evaluation-harness tasks: ``{task: [{"id", "text"}, ...]}``."""
    from .evaluation import _harness, offline_tasks_dir

    _, _, TaskManager = _harness()
    manager = TaskManager(include_path=[str(offline_tasks_dir()), *(include_path or [])])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown tasks {unknown}: see `lm-eval ls tasks`, or add YAMLs with --include-path")
    out = {}
    for name, task in _leaf_tasks(manager, tasks).items():
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        if docs is None:
            raise UserError(f"task {name} has no test or validation documents to check")
        query = task.doc_to_decontamination_query if task.should_decontaminate() else task.doc_to_text
        items = []
        for i, doc in enumerate(docs):
            if limit is not None and i >= limit:
                break
            items.append({"id": str(i), "text": str(query(doc))})
        out[name] = items
    return out


def _leaf_tasks(manager, tasks: list[str]) -> dict:
    """``{name: Task}`` of every task, groups (``mmlu``) down to their tasks: ``TaskManager.load`` where the
    harness has it (0.4.12+), else the older ``get_task_dict``."""
    if hasattr(manager, "load"):
        return dict(manager.load(tasks)["tasks"])
    from lm_eval.tasks import get_task_dict

    def flatten(task_dict: dict) -> dict:
        flat = {}
        for key, value in task_dict.items():
            flat.update(flatten(value) if isinstance(value, dict) else {getattr(key, "group_name", key): value})
        return flat

    return flatten(get_task_dict(tasks, manager))


def check_item(search: DataSearch, text: str, n: int = 13) -> tuple[bool, int | None, int, int]:
    """(contaminated, first checkpoint, n-grams, matched n-grams) of one item's text."""
    ids = search.encode(text)
    size = min(n, len(ids))
    windows = len(ids) - size + 1
    # one exact find per window (no document lists: a boilerplate n-gram can occur millions of times)
    found = [search.search(ids[s:s + size], limit=0, next_tokens=0) for s in range(windows)]
    starts = [s for s, result in enumerate(found) if result.count]
    known = [found[s].first_checkpoint for s in starts if found[s].first_checkpoint is not None]
    return bool(starts), (min(known) if known else None), windows, len(starts)


def analyze_contamination(search: DataSearch, items: dict[str, list[dict]], out: str | os.PathLike, n: int = 13,
                          progress: bool = True) -> dict:
    """Check every item of every task; write JSON, CSV and the plot into ``out``; returns the JSON record."""
    if n < 1:
        raise UserError(f"--n must be >= 1 (got {n})")
    results: list[ItemResult] = []
    total = sum(len(v) for v in items.values())
    with tqdm(total=total, desc="contamination", unit="item", disable=not progress) as bar:
        for task, task_list in items.items():
            for item in task_list:
                contaminated, first, ngrams, matched = check_item(search, item["text"], n)
                results.append(ItemResult(task, item["id"], contaminated, first, ngrams, matched))
                bar.update()
    checkpoints = sorted(set(search.order.values()))
    tasks = {}
    for task in items:
        mine = [r for r in results if r.task == task]
        bad = [r for r in mine if r.contaminated]
        tasks[task] = {
            "items": len(mine), "contaminated": len(bad), "fraction": len(bad) / len(mine) if mine else 0.0,
            "first_checkpoint": min((r.first_checkpoint for r in bad if r.first_checkpoint), default=None),
            # share of the task's items contaminated by the data seen up to each checkpoint
            "by_checkpoint": {str(k): sum(1 for r in bad if r.first_checkpoint and r.first_checkpoint <= k)
                              / max(len(mine), 1) for k in checkpoints},
        }
    record = {"index": str(search.index_dir), "data": str(search.data.path), "n": n, "tasks": tasks,
              "items": [asdict(r) for r in results]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONTAMINATION_JSON).write_text(json.dumps(record, indent=1))
    with open(out / CONTAMINATION_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ItemResult.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    plot_contamination(tasks, checkpoints, out / CONTAMINATION_PNG)
    return record


def summary_text(record: dict) -> str:
    lines = [f"{'task':<24} {'items':>6} {'contaminated':>13} {'share':>7}  first checkpoint"]
    for task, s in record["tasks"].items():
        first = f"ckpt_{s['first_checkpoint']:03d}" if s["first_checkpoint"] else "-"
        lines.append(f"{task:<24} {s['items']:>6} {s['contaminated']:>13} {s['fraction']:>7.1%}  {first}")
    return "\n".join(lines)


__all__ = ["ItemResult", "analyze_contamination", "check_item", "read_items", "summary_text", "task_items"]
