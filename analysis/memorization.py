"""Memorization across checkpoints (LLM360 paper section 4.3; Biderman et al. 2023).

For a training row: prompt = its first 32 tokens, the model greedily generates 32 tokens, and the score is the
fraction of those 32 positions whose token equals the row's own token there; a *full match* is score 1.0.
Per checkpoint the rows are drawn (seeded) only from what that checkpoint has already trained on: the exact
rows from a run dir's data-sequence log, whole chunks from an order (K2's for ``LLM360/K2``). One seeded
permutation of the candidate rows is shared by all checkpoints, each taking its first N eligible rows, so
checkpoints that saw the same data are scored on the same rows and their per-row scores can be correlated.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

import k2hf.checkpoints as checkpoints_api
from k2hf.checkpoints import Checkpoint
from k2hf.errors import UserError
from k2hf.formats import RunDir
from k2hf.indices import parse_selection
from k2hf.modeling import CACHE_ARG
from k2hf.pretrain.data.reader import PreparedData
from k2hf.recipes import RecipeError, Section
from k2hf.release import K2_HUB_MODEL, k2_chunk_order, order_preset

from .checkpoint_tasks import CheckpointJob, Execution, Merged, input_device, run_job
from .run_record import RunRecord

logger = logging.getLogger(__name__)

SCORES = "scores.csv"
SUMMARY = "summary.json"
HISTOGRAM = "score_histogram.png"
CORRELATION = "score_correlation.png"


@dataclass
class MemorizationConfig(Section):
    """Analysis360's defaults: 32-token prompt, 32 greedy tokens, 1000 rows per checkpoint, seed 42."""

    prompt_tokens: int = field(default=32, metadata={"help": "the row's first tokens, given as the prompt"})
    continuation_tokens: int = field(default=32, metadata={"help": "greedy tokens compared with the row's own"})
    samples: int = field(default=1000, metadata={"help": "rows per checkpoint (Analysis360's count)"})
    seed: int = field(default=42, metadata={"help": "which rows are drawn"})
    batch_size: int = field(default=64, metadata={"help": "rows decoded at once"})
    include_untrained: bool = field(default=False, metadata={
        "help": "also draw rows the checkpoint has not trained on (a control group)"})

    def validate(self) -> None:
        if self.prompt_tokens < 1 or self.continuation_tokens < 1 or self.samples < 1 or self.batch_size < 1:
            raise RecipeError("prompt and continuation lengths, --samples and --batch-size must be >= 1")


# ---------------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def greedy_continuations(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation of every prompt in the batch at once (KV cache), exactly ``new_tokens`` tokens each.

    Written here rather than through ``generate``: the score needs all ``new_tokens`` positions even when the
    model predicts eos (``generate`` stops there and pads), and ``min_new_tokens`` would change the argmax by
    masking eos. Prompts all have the same length, so no padding or attention mask is involved.
    """
    cached = {CACHE_ARG: DynamicCache(config=model.config), "use_cache": True}  # filled in place by each call
    out = model(input_ids=prompts, logits_to_keep=1, **cached)
    token = out.logits[:, -1].argmax(-1)
    tokens = [token]
    for _ in range(new_tokens - 1):
        out = model(input_ids=token[:, None], **cached)
        token = out.logits[:, -1].argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def memorization_scores(generated: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per row: the fraction of positions where the greedy token equals the row's token."""
    return (generated == expected).float().mean(dim=1)


# ---------------------------------------------------------------------------------------------- row sampling
@dataclass(frozen=True)
class TrainedData:
    """What one checkpoint has trained on: whole chunks, and/or exact rows per chunk (``None`` = unknown)."""

    chunks: frozenset[int] | None = None
    rows: dict[int, np.ndarray] | None = None

    def mask(self, chunk_ids: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
        if self.rows is not None:
            mask = np.zeros(len(chunk_ids), dtype=bool)
            for chunk, rows in self.rows.items():
                here = chunk_ids == chunk
                mask[here] = np.isin(row_ids[here], rows)
            return mask
        if self.chunks is not None:
            return np.isin(chunk_ids, sorted(self.chunks))
        return np.ones(len(chunk_ids), dtype=bool)


def trained_data(source: str | os.PathLike, checkpoint: Checkpoint, order: list[int] | None) -> TrainedData:
    """Exact rows for a run dir's checkpoints; the first N chunks of ``order`` for ``ckpt_N`` elsewhere."""
    if checkpoint.path is not None and RunDir.is_run_dir(source):
        return TrainedData(rows=RunRecord(source).trained_rows(checkpoint.name))
    if order is not None and checkpoint.number is not None:
        return TrainedData(chunks=frozenset(order[: checkpoint.number]))
    return TrainedData()


class RowSampler:
    """One seeded permutation of the candidate rows (``chunks`` of ``data``); a checkpoint takes its first N."""

    def __init__(self, data: PreparedData, chunks: list[int], seed: int) -> None:
        sizes = [len(data.chunk(c)) for c in chunks]
        self.chunk_ids = np.repeat(np.asarray(chunks, dtype=np.int64), sizes)
        self.row_ids = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if sizes else np.zeros(0, int)
        permutation = np.random.default_rng(seed).permutation(len(self.chunk_ids))
        self.chunk_ids, self.row_ids = self.chunk_ids[permutation], self.row_ids[permutation]

    def sample(self, n: int, trained: TrainedData | None) -> list[tuple[int, int]]:
        eligible = np.ones(len(self.chunk_ids), bool) if trained is None else trained.mask(self.chunk_ids,
                                                                                            self.row_ids)
        picked = np.flatnonzero(eligible)[:n]
        return [(int(self.chunk_ids[i]), int(self.row_ids[i])) for i in picked]


# ---------------------------------------------------------------------------------------------- the analysis
def select_checkpoints(available: list[Checkpoint], which: str | list[str] = "all") -> list[Checkpoint]:
    """``all`` (every chunk checkpoint, or the one model of a model dir), ``last`` (the last of those), or numbers,
    ranges and names (``1,5,9``, ``1-4``, ``step_0000012``)."""
    if which in ("all", "last"):
        chosen = [c for c in available if c.kind in ("chunk", "model")]
        if not chosen:
            raise UserError("the source has no chunk checkpoints yet; name checkpoints with --checkpoints")
        return chosen[-1:] if which == "last" else chosen
    names = parse_selection(which) if isinstance(which, str) else which
    try:
        return [checkpoints_api.find(available, name) for name in names]
    except checkpoints_api.CheckpointError as error:
        raise UserError(str(error)) from None


class Memorization(CheckpointJob):
    """Scores each checkpoint's planned rows (the plan is drawn once, for every checkpoint, before any task runs).
    Merged: ``scores.csv``, ``summary.json`` (with each failed checkpoint's reason), the PNGs."""

    analysis = "memorization"
    row_progress = False  # a bar per checkpoint's rows: on when this process runs the checkpoints itself

    def __init__(self, source: str, out, checkpoints: list[Checkpoint], data: str, chunks: list[int],
                 plan: dict[str, list[tuple[int, int]]], config: MemorizationConfig,
                 load_kwargs: dict | None = None) -> None:
        super().__init__(source, out, checkpoints, load_kwargs)
        self.data, self.chunks, self.plan, self.config = str(data), list(chunks), plan, config

    def settings(self) -> dict:
        rows = json.dumps(self.plan, sort_keys=True).encode()
        return {"data": self.data, "chunks": self.chunks, "config": asdict(self.config),
                "plan_sha256": hashlib.sha256(rows).hexdigest()}

    def run_checkpoint(self, checkpoint: Checkpoint) -> dict:
        model = checkpoints_api.load(self.source, checkpoint, **self.load_kwargs).eval()
        rows = self.plan[checkpoint.name]
        with tqdm(total=len(rows), desc=checkpoint.name, unit="row", leave=False, disable=not self.row_progress) \
                as bar:
            scored = _score_rows(model, PreparedData(self.data), rows, self.config, bar)
        return {"rows": [list(r) for r in scored]}

    def merge(self, results: dict[str, dict], failed: dict[str, str]) -> Merged:
        scored = {name: [tuple(r) for r in result["rows"]] for name, result in results.items()}
        landed = [c for c in self.checkpoints if c.name in results]
        summary = _write_outputs(self.out, scored, landed, self.chunks, self.config, self.source, self.data, failed)
        return Merged(self.out / SUMMARY, value=summary)


def analyze_memorization(
    source: str | os.PathLike,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    checkpoints: str | list[str] = "all",
    chunks: list[int] | None = None,
    config: MemorizationConfig | None = None,
    order: list[int] | str | None = None,
    device: str | None = None,
    progress: bool = True,
    execution: Execution | None = None,
    **from_pretrained_kwargs,
) -> dict | None:
    """Score memorization for each selected checkpoint of ``source``; writes ``scores.csv``, ``summary.json``
    and PNGs into ``out``; returns the summary (None when the checkpoints went to Slurm: the merge job writes it).

    ``source``: a run dir, a model dir or a Hub repo. ``data``: the prepared (or imported K2) data the rows come
    from (default for a run dir: the data it trained on). ``chunks``: where rows are drawn from (default: the
    chunks the earliest selected checkpoint has trained on). ``order``: chunk order (list or preset name)
    behind a Hub repo's ``ckpt_N`` (default for ``LLM360/K2``: K2's). ``device``: where each checkpoint goes
    (``cuda``; or ``device_map="auto"`` with ``max_memory`` to spread it over several GPUs). ``execution``: one
    task per checkpoint on local workers, Slurm or Ray (default: one after another here). Raises
    :class:`CheckpointsFailed` after merging when a checkpoint failed.
    """
    job = memorization_job(source, out, data, checkpoints, chunks, config, order, device, **from_pretrained_kwargs)
    job.row_progress = progress and (execution is None or execution.in_process)
    return run_job(job, execution, progress).checked().value


def memorization_job(source: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                     checkpoints: str | list[str] = "all", chunks: list[int] | None = None,
                     config: MemorizationConfig | None = None, order: list[int] | str | None = None,
                     device: str | None = None, **from_pretrained_kwargs) -> Memorization:
    """Check the inputs and draw every checkpoint's rows: the job :func:`analyze_memorization` runs."""
    config = config or MemorizationConfig()
    order = order_preset(order) if isinstance(order, str) else order
    available = checkpoints_api.list_checkpoints(source, order=order)
    selected = select_checkpoints(available, checkpoints)
    is_run = RunDir.is_run_dir(source)
    if data is None:
        if not is_run or RunRecord(source).data_dir is None:
            raise UserError("give --data: the prepared data dir the rows come from")
        data = RunRecord(source).data_dir
    prepared = PreparedData(data)
    if prepared.seq_len < config.prompt_tokens + config.continuation_tokens:
        raise UserError(f"rows of {data} have {prepared.seq_len} tokens; prompt + continuation need "
                        f"{config.prompt_tokens + config.continuation_tokens}")
    if order is None and selected[0].repo_id is not None and selected[0].repo_id.lower() == K2_HUB_MODEL.lower():
        order = k2_chunk_order()  # LLM360/K2's ckpt_N trained on the first N chunks of K2's real order
    trained = {c.name: trained_data(source, c, order) for c in selected}
    chunks = chunks if chunks is not None else _default_chunks(trained[selected[0].name], prepared)
    if any(t.rows is None and t.chunks is None for t in trained.values()):
        logger.warning("what %s trained on is unknown (a model dir, or a Hub repo without --preset): every row of "
                       "chunks %s counts as trained", source, chunks)
    bad = [c for c in chunks if not 0 <= c < prepared.num_chunks]
    if bad:
        raise UserError(f"chunks {bad} do not exist: {data} has chunks 0..{prepared.num_chunks - 1}")
    sampler = RowSampler(prepared, chunks, config.seed)
    plan = {c.name: sampler.sample(config.samples, None if config.include_untrained else trained[c.name])
            for c in selected}
    for name, rows in plan.items():
        if not rows:
            raise UserError(f"{name} has trained on no row of chunks {chunks}: pick --chunks it has seen "
                            "(`k2hf data order`), or --include-untrained")
    if device is not None:
        from_pretrained_kwargs.setdefault("device_map", device)
    return Memorization(str(source), out, selected, str(data), chunks, plan, config, from_pretrained_kwargs)


def _default_chunks(trained: TrainedData, data: PreparedData) -> list[int]:
    if trained.rows is not None:
        return sorted(trained.rows)
    if trained.chunks is not None:
        return sorted(trained.chunks)
    raise UserError(f"which chunks did this model train on? give --chunks (chunks 0..{data.num_chunks - 1})")


def _score_rows(model, data: PreparedData, rows: list[tuple[int, int]], config: MemorizationConfig,
                bar) -> list[tuple[int, int, float]]:
    p, k = config.prompt_tokens, config.continuation_tokens
    device = input_device(model)
    scored = []
    for i in range(0, len(rows), config.batch_size):
        batch = rows[i : i + config.batch_size]
        tokens = torch.from_numpy(np.stack([data.chunk(c).tokens[r, : p + k] for c, r in batch]).astype(np.int64))
        tokens = tokens.to(device)
        generated = greedy_continuations(model, tokens[:, :p], k)
        scores = memorization_scores(generated, tokens[:, p : p + k]).tolist()
        scored += [(c, r, s) for (c, r), s in zip(batch, scores)]
        bar.update(len(batch))
    return scored


def _write_outputs(out: Path, results: dict, selected: list[Checkpoint], chunks: list[int],
                   config: MemorizationConfig, source, data, failed: dict[str, str]) -> dict:
    k = config.continuation_tokens
    with open(out / SCORES, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "chunk", "row", "score", "full_match"])
        for name, rows in results.items():
            for chunk, row, score in rows:
                writer.writerow([name, chunk, row, f"{score:.6g}", int(score == 1.0)])
    per_checkpoint = {}
    for c in selected:
        scores = np.array([s for _, _, s in results[c.name]])
        matches = np.rint(scores * k).astype(int)
        per_checkpoint[c.name] = {
            "global_step": c.global_step, "tokens_seen": c.tokens_seen, "chunk_trained_last": c.chunk,
            "rows": len(scores), "mean_score": float(scores.mean()), "full_match_rate": float((scores == 1.0).mean()),
            # histogram[j] = rows whose greedy continuation matched exactly j of the k tokens
            "histogram": np.bincount(matches, minlength=k + 1).tolist(),
        }
    correlation = score_correlation(results)
    summary = {
        "source": str(source), "data": str(data), "chunks": chunks, "config": asdict(config),
        "checkpoints": per_checkpoint,
        "correlation": {"checkpoints": list(results), "pearson": correlation.tolist()} if len(results) > 1 else None,
        "failed": failed,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    from .plots import plot_correlation_heatmap, plot_score_histograms

    plot_score_histograms(per_checkpoint, k, out / HISTOGRAM)
    if len(results) > 1:
        plot_correlation_heatmap(list(results), correlation, out / CORRELATION)
    logger.info("memorization: wrote %s", out)
    return summary


def summary_table(summary: dict) -> str:
    """Per checkpoint: rows scored, mean score, full-match rate (``k2hf analyze memorization``)."""
    lines = [f"{'checkpoint':<24} {'rows':>6} {'mean score':>11} {'full match':>11}"]
    for name, stats in summary["checkpoints"].items():
        lines.append(f"{name:<24} {stats['rows']:>6} {stats['mean_score']:>11.4f} {stats['full_match_rate']:>11.2%}")
    return "\n".join(lines)


def score_correlation(results: dict[str, list[tuple[int, int, float]]]) -> np.ndarray:
    """Pearson correlation of per-row scores between every pair of checkpoints, over the rows both scored (NaN
    where fewer than 2 common rows or a constant score leaves it undefined)."""
    names = [*results]
    maps = [{(c, r): s for c, r, s in results[n]} for n in names]
    matrix = np.full((len(names), len(names)), np.nan)
    for i in range(len(names)):
        for j in range(i, len(names)):
            common = sorted(maps[i].keys() & maps[j].keys())
            if len(common) < 2:
                continue
            a = np.array([maps[i][key] for key in common])
            b = np.array([maps[j][key] for key in common])
            if a.std() == 0 or b.std() == 0:
                matrix[i, j] = matrix[j, i] = 1.0 if i == j else np.nan
                continue
            matrix[i, j] = matrix[j, i] = float(np.corrcoef(a, b)[0, 1])
    return matrix


__all__ = ["Memorization", "MemorizationConfig", "RowSampler", "TrainedData", "analyze_memorization",
           "greedy_continuations", "memorization_job", "memorization_scores", "score_correlation", "select_checkpoints",
           "summary_table", "trained_data"]
