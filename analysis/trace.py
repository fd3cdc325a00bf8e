"""Trace a model's words back to its training data (OLMoTrace, Liu et al. 2025, on K2's data sequence).

Generate from a prompt (or take a text), find the maximal spans of the output that occur verbatim in the training
rows (infini-gram's ``attribute``: a span is kept when it cannot be extended either way and still be found), and
for each span its count, the first checkpoint that had trained on it and a few source rows. Across checkpoints,
the traced share of the output shows how much of what a model says it has seen verbatim, as training goes on.

Output: ``OUT/trace.json`` (``spans`` with token offsets into the traced text) and ``OUT/trace.html``, one static
page with the spans highlighted (every string escaped, no script); ``OUT/traced_share.png`` across checkpoints.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import k2hf.checkpoints as checkpoints_api
from k2hf.checkpoints import Checkpoint
from k2hf.errors import UserError

from .checkpoint_tasks import CheckpointJob, Merged, input_device
from .memorization import select_checkpoints
from .plots import plot_traced_share
from .search import DataSearch

TRACE_JSON = "trace.json"
TRACE_HTML = "trace.html"
TRACE_PNG = "traced_share.png"


@dataclass
class TracedSpan:
    """Tokens ``start:end`` of the traced text occur ``count`` times in the training rows; ``first_checkpoint``
    had trained on one of them first; ``sources``: a few occurrences (earliest first) with the row's text."""

    start: int
    end: int
    text: str
    count: int
    first_checkpoint: int | None
    sources: list[dict] = field(default_factory=list)


@dataclass
class Trace:
    """One traced text: which checkpoint generated it (``None`` for a given text), its ids and spans."""

    checkpoint: str | None
    prompt: str | None
    text: str
    ids: list[int]
    spans: list[TracedSpan]

    @property
    def traced_share(self) -> float:
        """The share of the text's tokens inside at least one traced span."""
        covered = {i for s in self.spans for i in range(s.start, s.end)}
        return len(covered) / len(self.ids) if self.ids else 0.0

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "prompt": self.prompt, "text": self.text, "ids": self.ids,
                "tokens": len(self.ids), "traced_share": self.traced_share, "spans": [asdict(s) for s in self.spans]}

    @classmethod
    def from_dict(cls, record: dict) -> Trace:
        return cls(record["checkpoint"], record["prompt"], record["text"], record["ids"],
                   [TracedSpan(**span) for span in record["spans"]])


def trace_ids(search: DataSearch, ids: list[int], min_len: int = 8, max_count: int = 100_000,
              sources: int = 3, context: int = 16) -> list[TracedSpan]:
    """The maximal spans of ``ids`` (at least ``min_len`` tokens, at most ``max_count`` occurrences: very common
    spans say little about where a text came from) found in the training rows, in text order."""
    if not ids:
        return []
    spans = []
    for start, end in search.maximal_spans(ids, min_len, max_count):
        result = search.search(ids[start:end], limit=sources, next_tokens=0)
        spans.append(TracedSpan(
            start, end, search.tokenizer.decode(ids[start:end]), result.count, result.first_checkpoint,
            [{"chunk": o.chunk, "row": o.row, "offset": o.offset, "first_checkpoint": o.first_checkpoint,
              "source": asdict(o.source) if o.source else None,
              "text": search.row_text(o.chunk, o.row, max(0, o.offset - context), o.offset + end - start + context)}
             for o in result.occurrences]))
    return spans


def trace_text(search: DataSearch, text: str, **kwargs) -> Trace:
    """Trace a given text (encoded with the data's tokenizer, no BOS)."""
    ids = search.encode(text)
    return Trace(None, None, text, ids, trace_ids(search, ids, **kwargs))


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation ids of ``prompt``, encoded as training rows are (no BOS: K2's rows have none)."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=input_device(model))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    return [int(t) for t in out[0, ids.shape[1]:] if int(t) != tokenizer.eos_token_id]


def trace_model(source: str | os.PathLike, search: DataSearch, prompt: str, checkpoints: str = "all",
                max_new_tokens: int = 64, progress: bool = True, trace_kwargs: dict | None = None,
                **from_pretrained_kwargs) -> list[Trace]:
    """Each selected checkpoint of ``source`` continues ``prompt``; its continuation is traced (in this process;
    ``k2hf trace --checkpoints`` runs :class:`TraceCheckpoints` on an executor)."""
    selected = select_checkpoints(checkpoints_api.list_checkpoints(source), checkpoints)
    traces = []
    for checkpoint in tqdm(selected, desc="trace", unit="checkpoint", disable=not progress):
        traces.append(trace_checkpoint(source, checkpoint, search, prompt, max_new_tokens, trace_kwargs,
                                       **from_pretrained_kwargs))
    return traces


def trace_checkpoint(source: str | os.PathLike, checkpoint: Checkpoint, search: DataSearch, prompt: str,
                     max_new_tokens: int = 64, trace_kwargs: dict | None = None, **from_pretrained_kwargs) -> Trace:
    """One checkpoint's greedy continuation of ``prompt``, traced."""
    model, tokenizer = checkpoints_api.load_with_tokenizer(source, checkpoint, **from_pretrained_kwargs)
    ids = generate(model.eval(), tokenizer, prompt, max_new_tokens)
    del model
    text = tokenizer.decode(ids)
    if tokenizer.get_vocab() != search.tokenizer.get_vocab():  # another vocabulary: trace the words
        ids = search.encode(text)
    return Trace(checkpoint.name, prompt, text, ids, trace_ids(search, ids, **(trace_kwargs or {})))


class TraceCheckpoints(CheckpointJob):
    """``k2hf trace --checkpoints``: each checkpoint's continuation of the prompt, traced in the index (opened
    once per task). Merged: ``trace.json`` (with each failed checkpoint's reason), ``trace.html``, the PNG."""

    analysis = "trace"

    def __init__(self, source: str, out, checkpoints: list[Checkpoint], index: str, data: str | None,
                 order: str | None, prompt: str, max_new_tokens: int, trace_kwargs: dict, settings: dict,
                 load_kwargs: dict | None = None, search: DataSearch | None = None) -> None:
        super().__init__(source, out, checkpoints, load_kwargs)
        self.index, self.data, self.order = str(index), data, order
        self.prompt, self.max_new_tokens, self.trace_kwargs = prompt, max_new_tokens, dict(trace_kwargs)
        self.report_settings = dict(settings)
        self._search = search  # this process's open index, if the caller has one

    def __getstate__(self) -> dict:  # an open index (memory maps, the engine) stays in its process
        return {**self.__dict__, "_search": None}

    @property
    def search(self) -> DataSearch:
        if self._search is None:
            self._search = DataSearch(self.index, data=self.data, order=self.order)
        return self._search

    def settings(self) -> dict:
        return {"index": self.index, "data": self.data, "order": self.order, "prompt": self.prompt,
                "max_new_tokens": self.max_new_tokens, "trace": self.trace_kwargs}

    def run_checkpoint(self, checkpoint: Checkpoint) -> dict:
        return trace_checkpoint(self.source, checkpoint, self.search, self.prompt, self.max_new_tokens,
                                self.trace_kwargs, **self.load_kwargs).to_dict()

    def merge(self, results: dict[str, dict], failed: dict[str, str]) -> Merged:
        traces = [Trace.from_dict(results[c.name]) for c in self.checkpoints if c.name in results]
        if not traces:
            return Merged(None)
        return Merged(write_trace(traces, self.search, self.out, self.report_settings, failed), value=traces)


def write_trace(traces: list[Trace], search: DataSearch, out: str | os.PathLike, settings: dict,
                failed: dict[str, str] | None = None) -> Path:
    """``trace.json`` (the last trace's spans at the top, every checkpoint's under ``traces``), the HTML page and,
    for several checkpoints, the traced share per checkpoint as a PNG."""
    if not traces:
        raise UserError("nothing to trace")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    last = traces[-1]
    record = {"index": str(search.index_dir), "data": str(search.data.path), **settings, **last.to_dict(),
              "traces": [t.to_dict() for t in traces], **({"failed": failed} if failed else {})}
    (out / TRACE_JSON).write_text(json.dumps(record, indent=1, ensure_ascii=False))
    (out / TRACE_HTML).write_text(render_html(traces, search, settings, failed), encoding="utf-8")
    if len(traces) > 1:
        plot_traced_share([t.checkpoint or "text" for t in traces], [t.traced_share for t in traces], out / TRACE_PNG)
    return out / TRACE_JSON


def _highlighted(trace: Trace, search: DataSearch) -> str:
    """The text token by token, tokens inside spans marked (darker where more spans cover them)."""
    depth = [0] * len(trace.ids)
    for span in trace.spans:
        for i in range(span.start, span.end):
            depth[i] += 1
    parts, previous = [], ""
    for i in range(len(trace.ids)):
        # decode prefixes so SentencePiece's spaces come out as the whole text does
        text = search.tokenizer.decode(trace.ids[: i + 1])
        piece, previous = text[len(previous):], text
        escaped = html.escape(piece)
        parts.append(f'<mark class="d{min(depth[i], 3)}">{escaped}</mark>' if depth[i] else escaped)
    return "".join(parts)


def render_html(traces: list[Trace], search: DataSearch, settings: dict, failed: dict[str, str] | None = None) -> str:
    """One static page: per trace the text with spans highlighted, then each span with its count, first
    checkpoint and source rows. Every string goes through ``html.escape``."""
    e = html.escape
    sections = []
    for trace in traces:
        rows = []
        for span in trace.spans:
            first = f"ckpt_{span.first_checkpoint:03d}" if span.first_checkpoint else "not trained yet"
            sources = "".join(
                f"<li>chunk {s['chunk']} row {s['row']} token {s['offset']}"
                f"{' - ' + e(s['source']['subset']) + ' ' + e(s['source']['file']) + ' record ' + str(s['source']['record']) if s['source'] else ''}"  # noqa: E501
                f"<br><code>{e(s['text'])}</code></li>" for s in span.sources)
            rows.append(f"<tr><td>{span.start}-{span.end}</td><td><code>{e(span.text)}</code></td>"
                        f"<td>{span.count:,}</td><td>{first}</td><td><ul>{sources}</ul></td></tr>")
        title = e(trace.checkpoint) if trace.checkpoint else "given text"
        prompt = f"<p class=\"prompt\">Prompt: <code>{e(trace.prompt)}</code></p>" if trace.prompt else ""
        sections.append(
            f"<section><h2>{title}: {100 * trace.traced_share:.1f}% of {len(trace.ids)} tokens traced, "
            f"{len(trace.spans)} span(s)</h2>{prompt}<p class=\"text\">{_highlighted(trace, search)}</p>"
            f"<table><thead><tr><th>tokens</th><th>span</th><th>count</th><th>first checkpoint</th>"
            f"<th>training rows (earliest first)</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")
    failures = "".join(f"<li>{e(name)}: {e(reason)}</li>" for name, reason in (failed or {}).items())
    if failures:
        sections.append(f'<section class="failed"><h2>Failed checkpoints</h2><ul>{failures}</ul></section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>K2 trace</title>
<style>
body {{ font-family: sans-serif; margin: 1em; max-width: 70em; }} table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }} code {{ white-space: pre-wrap; }}
p.text {{ white-space: pre-wrap; font-family: monospace; line-height: 1.6; border: 1px solid #ddd; padding: 8px; }}
mark.d1 {{ background: #fff3b0; }} mark.d2 {{ background: #ffd966; }} mark.d3 {{ background: #f4b400; }}
</style></head><body>
<h1>Training-data trace</h1>
<p>Spans of at least {settings.get("min_len")} tokens found verbatim in the training rows of {e(str(search.data.path))}
(index {e(str(search.index_dir))}), highlighted; darker where spans overlap.</p>
{chr(10).join(sections)}
</body></html>
"""


__all__ = ["Trace", "TraceCheckpoints", "TracedSpan", "generate", "render_html", "trace_checkpoint", "trace_ids",
           "trace_model", "trace_text", "write_trace"]
