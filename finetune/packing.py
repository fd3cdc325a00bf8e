"""``k2hf sft pack``: sources -> K2-Chat conversations -> ids + assistant-only labels -> 8K packed rows.

:func:`pack` runs five stages, one function each: :func:`read_sources` (read + validate, rejections counted by
reason), :func:`draw_mixture` (each source's target, seeded), :func:`encode_drawn` (worker processes),
:func:`pack_rows` (Arrow + TRL's packing) and :func:`save_packed` (atomic, with ``report.json``).

* Conversations are encoded structurally (:func:`k2hf.chat_template.encode_chats_arrays`): message text can
  never become a control token, and labels are the ids on each reply and its eos, -100 elsewhere (system,
  user, control tokens and ``<|endofchat|>``).
* Conversations longer than ``max_length`` follow the recipe's policy: ``split_turns`` (cut at turn boundaries
  into several conversations, each keeping the system prompt; a single turn still too long is truncated),
  ``truncate`` or ``drop``.
* Packing is TRL's best-fit-decreasing (``trl.pack_dataset(strategy="bfd")``), which writes ``seq_lengths`` per
  row; TRL's collator turns them into ``position_ids`` restarting per conversation, and K2 isolates documents
  from those on sdpa/flex/flash-attn.

The saved dataset (Arrow, ``input_ids``/``labels``/``seq_lengths``) goes straight into ``SFTTrainer``;
``report.json`` accounts for every input conversation.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from k2hf.chat_template import encode_chats_arrays, has_tool_tokens, split_conversation
from k2hf.errors import UserError
from k2hf.records import Rejection
from k2hf.token_layouts import TOOL_CALL_END, TOOL_CALL_START
from k2hf.tokenizer import save_tokenizer

from .mixture import sample_indices, target_count
from .recipe import SFTRecipe
from .sources import read_rows, resolve_paths, to_conversation

REPORT = "report.json"
DATASET = "dataset"
ENCODE_BATCH = 512
IGNORE = -100

logger = logging.getLogger(__name__)


class EmptyMixtureError(UserError):
    """A mixture that leaves nothing to train on."""


class StrictModeError(UserError):
    """A rejected conversation under ``strict: true``."""


def load_sft_tokenizer(recipe: SFTRecipe):
    """The K2 tokenizer of the base model (or ``recipe.tokenizer``) in the recipe's ``layout``, with the K2-Chat
    template (the format the packed rows are in).

    A base-model tokenizer (layout ``k2``, as ``LLM360/K2`` ships it) is extended to the recipe's layout (K2's
    32032 embedding rows have room); a chat tokenizer of another layout than the recipe's is a
    :class:`~k2hf.token_layouts.LayoutError` (its ids would mean other tokens)."""
    from transformers import AutoTokenizer

    from k2hf.chat_template import apply_chat_template_to
    from k2hf.token_layouts import DEFAULT_LAYOUT, LayoutError, detect_layout
    from k2hf.tokenizer import build_k2_tokenizer

    source = recipe.resolve_model(recipe.tokenizer or recipe.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    found = detect_layout(tokenizer)
    if found == "k2":
        target = recipe.layout or DEFAULT_LAYOUT
        logger.info("extending the base tokenizer of %s to the %s layout", source, target)
        return build_k2_tokenizer(tokenizer, layout=target)
    if recipe.layout is not None and found != recipe.layout:
        found_text = f"layout {found!r}" if found else "no known K2 layout"
        raise LayoutError(f"{source}: its tokenizer has {found_text}, but the recipe says layout {recipe.layout!r}; "
                          "start from a checkpoint of that layout (or a K2 base), or change the recipe's `layout`")
    return apply_chat_template_to(tokenizer)


@dataclass
class SourcePool:
    """Stage 1's result for one source: its valid conversations (``(record, conversation)``) and its report
    (files, read, rejected by reason with examples, valid; stage 2 adds what was drawn)."""

    valid: list[tuple[int, list]]
    report: dict[str, Any]


@dataclass(frozen=True)
class Drawn:
    """One conversation the mixture drew: its source (index in the recipe), record and messages."""

    source: int
    record: int
    conversation: list


def read_sources(recipe: SFTRecipe, progress: bool = True, tool_tokens: bool = True) -> list[SourcePool]:
    """Stage 1, read + validate: every record of every source, adapted to a K2-Chat conversation or rejected
    with its reason (``strict``: the first rejection stops the work)."""
    pools = []
    for spec in recipe.sources:
        paths = resolve_paths(spec.paths, recipe.base_dir) if spec.paths else None
        valid: list[tuple[int, list]] = []
        rejected: Counter = Counter()
        examples: list[str] = []
        read = 0
        for record, item in tqdm(read_rows(paths, spec.hub), desc=f"read {spec.name}", unit="conv",
                                 disable=not progress):
            read += 1
            rejection = item if isinstance(item, Rejection) else None
            if rejection is None:
                try:
                    valid.append((record, to_conversation(spec.kind, item[1], spec.options, tool_tokens)))
                    continue
                except Rejection as error:
                    rejection = error
            if recipe.strict:
                raise StrictModeError(f"source {spec.name!r} record {record + 1}: {rejection.reason}: {rejection}")
            rejected[rejection.reason] += 1
            if len(examples) < 5:
                examples.append(f"record {record + 1}: {rejection.reason}: {rejection}")  # 1-based, as lines are
        pools.append(SourcePool(valid, {
            "name": spec.name, "kind": spec.kind, "sources": paths or [f"hub:{spec.hub['path']}"], "read": read,
            "rejected": dict(rejected), "reject_examples": examples, "valid": len(valid)}))
    return pools


def draw_mixture(recipe: SFTRecipe, pools: list[SourcePool]) -> list[Drawn]:
    """Stage 2: each source's target count (given, or its weight's share of ``total``), drawn with its own seed
    (up-sampling repeats, down-sampling picks distinct ones); each pool's report records what was drawn."""
    weights_sum = sum(s.weight or 0.0 for s in recipe.sources)
    drawn = []
    for s_index, (spec, pool) in enumerate(zip(recipe.sources, pools)):
        count = target_count(spec.target, spec.weight, recipe.total, weights_sum, len(pool.valid))
        picks = sample_indices(len(pool.valid), count, seed=recipe.seed + s_index)
        drawn.extend(Drawn(s_index, *pool.valid[i]) for i in picks)
        distinct = len(np.unique(picks))
        pool.report.update(target=count, drawn=int(len(picks)), distinct_drawn=distinct,
                           not_drawn=len(pool.valid) - distinct)
    return drawn


def encode_conversations(tokenizer, conversations: list[list], max_length: int, policy: str,
                         validated: bool = False) -> list[list[tuple]]:
    """``(input_ids, labels, status)`` pieces (int32 arrays) per conversation; status: kept/truncated/split/dropped."""
    out = []
    encoded = encode_chats_arrays(tokenizer, conversations, validate=not validated)
    for conversation, (ids, reply_mask) in zip(conversations, encoded):
        ids, labels = _labelled(ids, reply_mask)
        if len(ids) <= max_length:
            out.append([(ids, labels, "kept")])
        elif policy == "drop":
            out.append([(ids[:0], labels[:0], "dropped")])
        elif policy == "truncate":
            out.append([(ids[:max_length], labels[:max_length], "truncated")])
        else:
            out.append(_split_turns(tokenizer, conversation, max_length))
    return out


def _labelled(ids: np.ndarray, reply_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids and labels (ids on reply tokens and their eos, -100 elsewhere)."""
    return ids, np.where(reply_mask, ids, np.int32(IGNORE))


def _split_turns(tokenizer, conversation, max_length: int) -> list[tuple]:
    """Cut at exchange boundaries (a user message and the replies, calls and results up to the next one) into
    conversations that fit, each repeating the system prompt and the tools."""
    messages, tools = split_conversation(conversation)
    system = list(messages[:1]) if messages[0]["role"] == "system" else []
    exchanges: list[list] = []
    for message in messages[len(system):]:
        if message["role"] == "user" or not exchanges:
            exchanges.append([message])
        else:
            exchanges[-1].append(message)

    def joined(group: list[list]):
        turns = system + [m for exchange in group for m in exchange]
        return {"messages": turns, "tools": tools} if tools else turns

    pieces, current = [], []
    for exchange in exchanges:
        if current and len(encode_chats_arrays(tokenizer, [joined(current + [exchange])], validate=False)[0][0]) \
                > max_length:
            pieces.append(joined(current))
            current = [exchange]
        else:
            current.append(exchange)
    pieces.append(joined(current))
    out = []
    for encoded in encode_chats_arrays(tokenizer, pieces, validate=False):
        ids, labels = _labelled(*encoded)
        status = "split" if len(ids) <= max_length else "split_truncated"
        out.append((ids[:max_length], labels[:max_length], status))
    return out


def tool_counts(conversation) -> Counter:
    """Tool calls and tool results in one conversation (for the pack report)."""
    messages, _ = split_conversation(conversation)
    return Counter(tool_calls=sum(len(m.get("tool_calls") or []) for m in messages if m["role"] == "assistant"),
                   tool_results=sum(m["role"] == "tool" for m in messages))


def trained_tool_call_tokens(ids: np.ndarray, labels: np.ndarray, start_id: int, end_id: int) -> int:
    """Trained tokens from each ``<tool_call>`` to its ``</tool_call>``, both included."""
    opened = np.cumsum(ids == start_id)
    closed_before = np.cumsum(ids == end_id) - (ids == end_id)
    return int(((opened > closed_before) & (labels != IGNORE)).sum())


_WORKER_TOKENIZER = None


def _init_worker(tokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = tokenizer


def _no_parallelism() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core; no nested Rust thread pools


def _encode_job(args: tuple) -> list[tuple]:
    conversations, max_length, policy = args
    return encode_conversations(_WORKER_TOKENIZER, conversations, max_length, policy, validated=True)


def encode_drawn(tokenizer, conversations: list[list], recipe: SFTRecipe, progress: bool = True
                 ) -> list[list[tuple]]:
    """Stage 3: every conversation to ``(input_ids, labels, status)`` pieces (:func:`encode_conversations`), in
    batches over ``num_proc`` worker processes."""
    batches = [(conversations[i : i + ENCODE_BATCH], recipe.max_length, recipe.overlong)
               for i in range(0, len(conversations), ENCODE_BATCH)]
    encoded: list[list[tuple]] = []
    with tqdm(total=len(conversations), desc="encode", unit="conv", disable=not progress) as bar:
        if recipe.num_proc > 1 and len(batches) > 1:
            # forked workers inherit the tokenizer (no pickling round trip); elsewhere it is sent once per worker
            fork = "fork" in multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if fork else None)
            _init_worker(tokenizer) if fork else None
            initargs = () if fork else (tokenizer,)
            with ProcessPoolExecutor(recipe.num_proc, mp_context=context, initializer=_init_worker if not fork else
                                     _no_parallelism, initargs=initargs) as pool:
                for result in pool.map(_encode_job, batches):
                    encoded.extend(result)
                    bar.update(len(result))
        else:
            for conv_batch, max_length, policy in batches:
                result = encode_conversations(tokenizer, conv_batch, max_length, policy, validated=True)
                encoded.extend(result)
                bar.update(len(result))
    return encoded


@dataclass
class Documents:
    """The pieces that go into rows (ids and labels per document), with per-source counts for the report."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    statuses: list[Counter]  # per source: kept / truncated / split / dropped
    tools: list[Counter]  # per source: tool calls, results, call tokens trained


def documents_of(drawn: list[Drawn], encoded: list[list[tuple]], tokenizer, sources: int) -> Documents:
    """The documents to pack, in the drawn order; every piece counted under its source."""
    docs = Documents([], [], [Counter() for _ in range(sources)], [Counter() for _ in range(sources)])
    call_ids = tokenizer.convert_tokens_to_ids([TOOL_CALL_START, TOOL_CALL_END])
    for item, pieces in zip(drawn, encoded):
        tools = docs.tools[item.source]
        tools.update(tool_counts(item.conversation))
        for ids, labels, status in pieces:
            docs.statuses[item.source][status] += 1
            if len(ids):
                docs.input_ids.append(ids)
                docs.labels.append(labels)
                if tools["tool_calls"] and tokenizer.unk_token_id not in call_ids:
                    tools["tool_call_tokens_trained"] += trained_tool_call_tokens(ids, labels, *call_ids)
    return docs


def pack_rows(docs: Documents, max_length: int):
    """Stage 4: the documents as one Arrow table, packed into rows by TRL's best-fit-decreasing (``seq_lengths``
    per row)."""
    import pyarrow as pa
    from datasets import Dataset
    from trl import pack_dataset

    offsets = np.zeros(len(docs.input_ids) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in docs.input_ids], out=offsets[1:])
    flat_ids, flat_labels = np.concatenate(docs.input_ids), np.concatenate(docs.labels)
    table = pa.table({"input_ids": pa.LargeListArray.from_arrays(offsets, flat_ids).cast(pa.list_(pa.int32())),
                      "labels": pa.LargeListArray.from_arrays(offsets, flat_labels).cast(pa.list_(pa.int32()))})
    return pack_dataset(Dataset(table), seq_length=max_length, strategy="bfd")


def save_packed(out: Path, packed, report: dict, tokenizer) -> None:
    """Stage 5: the rows, ``report.json`` and the tokenizer, written to a temp dir and renamed into place."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    packed.save_to_disk(str(tmp / DATASET))
    (tmp / REPORT).write_text(json.dumps(report, indent=1))
    save_tokenizer(tokenizer, tmp / "tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def pack(recipe: SFTRecipe, out: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Do all the data work of the recipe into ``out`` (default: the recipe's packed dir); returns the report.

    Read + validate -> draw the mixture -> encode -> pack -> save with the report, one stage after the other."""
    out = Path(out) if out is not None else recipe.packed_path
    started = time.perf_counter()
    tokenizer = load_sft_tokenizer(recipe)
    pools = read_sources(recipe, progress, tool_tokens=has_tool_tokens(tokenizer))
    drawn = draw_mixture(recipe, pools)
    encoded = encode_drawn(tokenizer, [d.conversation for d in drawn], recipe, progress)
    docs = documents_of(drawn, encoded, tokenizer, len(recipe.sources))
    if not docs.input_ids:
        read = ", ".join(f"{p.report['name']}: {p.report['read']} read, rejected {p.report['rejected'] or 'none'}"
                         for p in pools)
        raise EmptyMixtureError(f"the SFT mixture has no conversation to train on ({read}): check the sources' "
                                "paths, kinds and fields, or the `overlong` policy")
    packed = pack_rows(docs, recipe.max_length)
    report = _report(recipe, pools, docs, packed, time.perf_counter() - started)
    save_packed(out, packed, report, tokenizer)
    return report


def _report(recipe: SFTRecipe, pools: list[SourcePool], docs: Documents, packed, seconds: float) -> dict:
    seq_lengths = packed["seq_lengths"]
    row_lengths = [sum(s) for s in seq_lengths]
    label_values = packed.data.column("labels").combine_chunks().values.to_numpy()
    tokens = int(sum(row_lengths))
    trained = int((label_values != IGNORE).sum())
    source_reports = []
    for pool, status, tools in zip(pools, docs.statuses, docs.tools):
        report = pool.report
        report["tools"] = {key: tools[key] for key in ("tool_calls", "tool_results", "tool_call_tokens_trained")}
        report["overlong"] = {k: v for k, v in status.items() if k != "kept"}
        report["documents_packed"] = sum(v for k, v in status.items() if k != "dropped")
        report["conversations_dropped"] = status.get("dropped", 0)
        report["conversations_packed"] = report["drawn"] - status.get("dropped", 0)
        source_reports.append(report)
    return {
        "fingerprint": recipe.data_fingerprint(),
        "max_length": recipe.max_length,
        "overlong_policy": recipe.overlong,
        "sources": source_reports,
        "documents": sum(len(s) for s in seq_lengths),
        "rows": len(row_lengths),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_fraction": trained / tokens if tokens else 0.0,
        "fill_ratio": tokens / (len(row_lengths) * recipe.max_length) if row_lengths else 0.0,
        "max_row_length": max(row_lengths, default=0),
        "seconds": round(seconds, 2),
        "documents_encoded": len(docs.input_ids),
    }


def report_text(report: dict, where: str | os.PathLike) -> str:
    """What a person reads after ``k2hf sft pack`` wrote ``report`` (its ``report.json``) into ``where``."""
    lines = [f"packed {report['documents']} conversations into {report['rows']} rows of <= {report['max_length']} "
             f"tokens (fill {report['fill_ratio']:.3f}, trained tokens {report['trained_fraction']:.1%}) -> {where}"]
    for source in report["sources"]:
        rejected = ", ".join(f"{k} {v}" for k, v in source["rejected"].items()) or "none"
        lines.append(f"  {source['name']}: {source['read']} read, rejected: {rejected}; {source['drawn']} drawn "
                     f"(target {source['target']}), overlong: {source['overlong'] or 'none'}")
    return "\n".join(lines)


def load_packed(recipe: SFTRecipe, progress: bool = True):
    """The packed dataset of ``recipe``: reused when its report matches the recipe's data, else rebuilt."""
    from datasets import load_from_disk
    from filelock import FileLock

    path = recipe.packed_path
    report_path = path / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    # every rank of a multi-process launch (and any other run sharing the folder) comes here: the first to take
    # the lock packs, the others wait and then find its result (no two packers writing the same temp folder)
    with FileLock(str(path) + ".lock"):
        if report_path.is_file() and json.loads(report_path.read_text()).get("fingerprint") == \
                recipe.data_fingerprint():
            logger.info("reusing the packed data in %s", path)
            report = json.loads(report_path.read_text())
        else:
            logger.info("packing the SFT data into %s", path)
            report = pack(recipe, path, progress)
    return load_from_disk(str(path / DATASET)), report
