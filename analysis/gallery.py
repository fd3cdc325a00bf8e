"""Prompt and evaluation galleries across checkpoints (the K2 paper's Prompt and Evaluation Galleries).

For every checkpoint: its greedy (or seeded, sampled) continuation of each prompt, and for each multiple-choice
item the log-likelihood of every choice. Saved as JSONL and rendered as one self-contained static HTML page
(no script, no network): prompts and items down the side, checkpoints across. Prompts and model outputs are
untrusted text, so every string is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import k2hf.checkpoints as checkpoints_api
from k2hf.checkpoints import Checkpoint
from k2hf.errors import UserError
from k2hf.recipes import RecipeError, Section
from k2hf.records import Rejection, read_records

from .checkpoint_tasks import CheckpointJob, Execution, Merged, input_device, run_job
from .memorization import select_checkpoints

GALLERY_JSONL = "gallery.jsonl"
GALLERY_HTML = "gallery.html"


@dataclass
class GalleryConfig(Section):
    max_new_tokens: int = field(default=32, metadata={"help": "tokens each checkpoint continues a prompt with"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples with --seed"})
    seed: int = field(default=0, metadata={"help": "the sampling seed"})

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0:
            raise RecipeError(f"--max-new-tokens must be >= 1 and --temperature >= 0 (got {self.max_new_tokens}, "
                              f"{self.temperature})")


def read_prompts(path: str | os.PathLike) -> list[str]:
    """A ``.txt`` file (one prompt per line) or JSONL with a ``prompt`` field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a .txt file (one prompt per line) or JSONL with `prompt`")
    if path.suffix != ".jsonl":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [_field(row, "prompt", path, line) for line, row in _rows(path)]


def read_items(path: str | os.PathLike) -> list[dict]:
    """JSONL multiple-choice items: ``{"question": str, "choices": [str, ...], "answer": index}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: give JSONL items with question, choices and answer")
    items = []
    for line, row in _rows(path):
        question, choices, answer = (_field(row, k, path, line) for k in ("question", "choices", "answer"))
        if not isinstance(choices, list) or not choices or not isinstance(answer, int) or \
                not 0 <= answer < len(choices):
            raise UserError(f"{path} line {line + 1}: `choices` must be a non-empty list and `answer` an index into it")
        items.append({"question": question, "choices": choices, "answer": answer})
    return items


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(0-based line, object)`` of a small JSONL input; blank lines are allowed, anything else bad stops here."""
    for item in read_records(str(path), "jsonl"):
        if isinstance(item, Rejection):
            if item.reason == "empty_record":
                continue
            raise UserError(item.message())
        yield item


def _field(row: dict, key: str, path: Path, line: int):
    if key not in row:
        raise UserError(f"{path} line {line + 1}: missing field `{key}`")
    return row[key]


@torch.no_grad()
def continuation(model, tokenizer, prompt: str, config: GalleryConfig) -> str:
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=input_device(model))
    sampling = {"do_sample": True, "temperature": config.temperature} if config.temperature > 0 else \
        {"do_sample": False}
    if config.temperature > 0:
        torch.manual_seed(config.seed)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=config.max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id or 0, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def choice_logliks(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """Sum of log-probabilities of each choice's tokens after the question. As lm-evaluation-harness does, the
    choice's tokens are those of ``question + choice`` past the length of the question's own encoding."""
    cut = max(len(tokenizer(question, add_special_tokens=False)["input_ids"]), 1)
    scores = []
    for choice in choices:
        ids = tokenizer(question + choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids], device=input_device(model))
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        scores.append(float(logprobs[cut - 1 :].gather(1, ids[0, cut:, None]).sum()))
    return scores


class Gallery(CheckpointJob):
    """Each checkpoint's continuations of the prompts and log-likelihoods of the items' choices. Merged:
    ``gallery.jsonl`` and ``gallery.html`` (failed checkpoints named with their reason on the page)."""

    analysis = "gallery"

    def __init__(self, source: str, out, checkpoints: list[Checkpoint], prompts: list[str], items: list[dict],
                 config: GalleryConfig, load_kwargs: dict | None = None) -> None:
        super().__init__(source, out, checkpoints, load_kwargs)
        self.prompts, self.items, self.config = list(prompts), list(items), config

    def settings(self) -> dict:
        return {"prompts": self.prompts, "items": self.items, "config": asdict(self.config)}

    def run_checkpoint(self, checkpoint: Checkpoint) -> dict:
        model, tokenizer = self.load(checkpoint)
        records = []
        for i, prompt in enumerate(self.prompts):
            records.append({"checkpoint": checkpoint.name, "kind": "prompt", "index": i, "prompt": prompt,
                            "output": continuation(model, tokenizer, prompt, self.config)})
        for i, item in enumerate(self.items):
            scores = choice_logliks(model, tokenizer, item["question"], item["choices"])
            records.append({"checkpoint": checkpoint.name, "kind": "item", "index": i, **item, "logliks": scores,
                            "predicted": max(range(len(scores)), key=scores.__getitem__)})
        return {"records": records}

    def merge(self, results: dict[str, dict], failed: dict[str, str]) -> Merged:
        records = [r for c in self.checkpoints if c.name in results for r in results[c.name]["records"]]
        (self.out / GALLERY_JSONL).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        path = self.out / GALLERY_HTML
        landed = [c.name for c in self.checkpoints if c.name in results]
        path.write_text(render_html(records, landed, self.prompts, self.items, self.config, failed), encoding="utf-8")
        return Merged(path)


def build_gallery(source: str | os.PathLike, out: str | os.PathLike, prompts: list[str],
                  items: list[dict] | None = None, checkpoints: str = "all", config: GalleryConfig | None = None,
                  progress: bool = True, execution: Execution | None = None, **from_pretrained_kwargs) -> Path | None:
    """Run every selected checkpoint of ``source`` on the prompts and items (on ``execution``: default one after
    another here); write JSONL and the HTML page, whose path is returned (None when the checkpoints went to Slurm).
    Raises :class:`CheckpointsFailed` after merging when a checkpoint failed."""
    return run_job(gallery_job(source, out, prompts, items, checkpoints, config, **from_pretrained_kwargs),
                   execution, progress).checked().path


def gallery_job(source: str | os.PathLike, out: str | os.PathLike, prompts: list[str],
                items: list[dict] | None = None, checkpoints: str = "all", config: GalleryConfig | None = None,
                **from_pretrained_kwargs) -> Gallery:
    selected = select_checkpoints(checkpoints_api.list_checkpoints(source), checkpoints)
    return Gallery(str(source), out, selected, prompts, items or [], config or GalleryConfig(),
                   from_pretrained_kwargs)


def render_html(records: list[dict], checkpoints: list[str], prompts: list[str], items: list[dict],
                config: GalleryConfig, failed: dict[str, str] | None = None) -> str:
    """One static page; every piece of text goes through ``html.escape``."""
    e = html.escape
    cell = {(r["checkpoint"], r["kind"], r["index"]): r for r in records}
    head = "".join(f"<th>{e(c)}</th>" for c in checkpoints)
    rows = []
    for i, prompt in enumerate(prompts):
        outputs = "".join(f'<td class="output">{e(cell[(c, "prompt", i)]["output"])}</td>' for c in checkpoints)
        rows.append(f'<tr><th class="prompt">{e(prompt)}</th>{outputs}</tr>')
    for i, item in enumerate(items):
        cells = []
        for c in checkpoints:
            r = cell[(c, "item", i)]
            choices = "".join(
                f'<li class="{"correct" if j == item["answer"] else "wrong"}'
                f'{" picked" if j == r["predicted"] else ""}">{e(choice)} <span class="score">'
                f'{r["logliks"][j]:.3f}</span>{" &#10003;" if j == item["answer"] else ""}</li>'
                for j, choice in enumerate(item["choices"]))
            cells.append(f'<td class="item"><ol start="0">{choices}</ol></td>')
        rows.append(f'<tr><th class="question">{e(item["question"])}</th>{"".join(cells)}</tr>')
    failures = "".join(f"<li>{e(name)}: {e(reason)}</li>" for name, reason in (failed or {}).items())
    failures = f'<p class="failed">Failed checkpoints (not shown):</p><ul class="failed">{failures}</ul>' \
        if failures else ""
    mode = "greedy" if config.temperature == 0 else f"sampled, temperature {config.temperature}, seed {config.seed}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>K2 gallery</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }} table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; white-space: pre-wrap; max-width: 28em; }}
thead th {{ background: #f0f0f0; position: sticky; top: 0; }} th.prompt, th.question {{ text-align: left; }}
li.correct {{ color: #1a7f37; }} li.picked {{ font-weight: bold; }} .score {{ color: #666; font-size: 90%; }}
</style></head><body>
<h1>K2 gallery: {len(prompts)} prompts and {len(items)} items across {len(checkpoints)} checkpoints</h1>
<p>Outputs: {e(mode)}, {config.max_new_tokens} new tokens. Items: log-likelihood of each choice; the correct one is
green with &#10003;, the checkpoint's pick (highest log-likelihood) is bold.</p>{failures}
<table><thead><tr><th>prompt / item</th>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


__all__ = ["Gallery", "GalleryConfig", "build_gallery", "choice_logliks", "continuation", "gallery_job", "read_items",
           "read_prompts", "render_html"]
