"""``k2hf data prepare | verify | inspect | order | import-k2``: the pretraining data."""

from __future__ import annotations

import argparse

from k2hf.indices import index_list_arg

from ._common import add_executor_flags, given, slurm_flags


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="pretraining data: prepare, verify, inspect, order, import-k2, index, "
                          "search")
    commands = data.add_subparsers(dest="data_command", required=True)

    prep = commands.add_parser("prepare", help="tokenize a mixture into evenly mixed, shuffled chunks")
    prep.add_argument("--config", required=True, help="data recipe YAML (e.g. pretrain/configs/data/sample.yaml, "
                      "or a copy from `k2hf recipes copy data/sample DIR`)")
    prep.add_argument("--out", required=True, help="a local dir or an fsspec URL (s3://bucket/k2-data)")
    prep.add_argument("--on-error", choices=["fail", "skip"], default=None, help="bad records: fail (default) or skip")
    add_executor_flags(prep, "tasks per stage (default: one per source file / per chunk)")
    prep.add_argument("--keep-work", action="store_true", help="keep the tokenized shards after success")
    prep.add_argument("--work-dir", help="shards, plan and task records (default: OUT/.work; for an s3:// ... OUT, "
                      "./.k2hf-work/<hash>); must be shared by every task")
    prep.set_defaults(func=_prepare)

    verify = commands.add_parser("verify", help="re-hash chunks and check the manifest's counts")
    verify.add_argument("dir")
    verify.set_defaults(func=_verify)

    inspect = commands.add_parser("inspect", help="decode a row and show where each piece came from")
    inspect.add_argument("dir")
    inspect.add_argument("--chunk", type=int, required=True)
    inspect.add_argument("--row", type=int, required=True)
    inspect.set_defaults(func=_inspect)

    order = commands.add_parser("order", help="which chunk each checkpoint was trained on (and the reverse)")
    order.add_argument("source", nargs="?", help="a prepared data dir, or a pretraining run dir (what the run did)")
    order.add_argument("--preset", help="a built-in order instead of a source: k2 (K2's real order)")
    which = order.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=int, help="1-based checkpoint number (ckpt_001 = 1)")
    which.add_argument("--chunk", type=int, help="the reverse: which checkpoint finished this chunk")
    order.set_defaults(func=_order)

    imp = commands.add_parser("import-k2", help="LLM360's released K2 data chunks -> k2hf prepared data (bit for bit)")
    imp.add_argument("src", help="a dir of chunk_<i>.jsonl files, or the Hub dataset LLM360/K2Datasets (streamed)")
    imp.add_argument("--out", required=True)
    imp.add_argument("--chunks", type=index_list_arg("chunk numbers"),
                     help="which chunks, e.g. 0-15,32 (default: all 360)")
    imp.add_argument("--tokenizer", help="K2 tokenizer: a dir, or a Hub repo (default LLM360/K2)")
    imp.add_argument("--on-error", choices=["fail", "skip"],
                     help="malformed rows: stop naming file and line (default), or skip and count per reason")
    imp.add_argument("--revision", default=None, help="Hub revision of the dataset")
    imp.add_argument("--seq-len", type=int, help="tokens per released row (default: K2's 2048)")
    imp.set_defaults(func=_import_k2)

    index = commands.add_parser("index", help="an infini-gram index of the data's token ids (extra `search`)")
    index.add_argument("dir", help="a prepared or imported data dir")
    index.add_argument("--out", help="the index dir (default: DIR.index beside the data)")
    index.add_argument("--shards", type=int, default=1, help="contiguous groups of chunks, one index each "
                       "(build and query them in parallel; K2's 360 chunks: see the README)")
    index.add_argument("--mem-gb", type=float, default=4.0, help="memory per suffix-array part (bounds a task's "
                       "peak memory)")
    index.add_argument("--cpus-per-task", type=int, default=1, help="indexer jobs a task runs at once")
    add_executor_flags(index, "tasks (default: one per shard)")
    index.set_defaults(func=_index)

    search = commands.add_parser("search", help="count and find a phrase in the training data, with the first "
                                 "checkpoint that had seen it")
    search.add_argument("index", help="an index dir from `k2hf data index`")
    search.add_argument("text", nargs="?", help='the phrase; "a AND b OR c" is a CNF query (infini-gram syntax)')
    search.add_argument("--ids", type=index_list_arg("token ids"), help="token ids instead of text")
    search.add_argument("--limit", type=int, default=10, help="occurrences to show (earliest in training first)")
    search.add_argument("--next", type=int, default=10, help="most frequent next tokens to show (0: none)")
    search.add_argument("--tokenizer", help="encode the text with this tokenizer (default: the data's)")
    search.add_argument("--data", help="the indexed data dir, if it moved since indexing")
    search.add_argument("--order", help="first checkpoints from: a run dir (what it did), a data dir, or a preset "
                        "(k2) (default: the indexed data's order)")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(func=_search)


def _prepare(args: argparse.Namespace) -> int:
    from k2hf.pretrain.data.config import load_data_config
    from k2hf.pretrain.data.executors import slurm_settings
    from k2hf.pretrain.data.prepare import prepare, work_dir_for

    config = load_data_config(args.config, on_error=args.on_error, num_workers=args.workers)
    slurm = {**config.slurm, **slurm_flags(args)}
    manifest = prepare(config, args.out, keep_work=args.keep_work, executor=args.executor, tasks=args.tasks,
                       slurm=slurm_settings(slurm), ray_address=args.ray_address, dry_run=args.dry_run,
                       work_dir=args.work_dir)
    if manifest is None:
        run_dir = next(work_dir_for(args.out, args.work_dir).glob("run-*"))
        if args.dry_run:
            for script in sorted((run_dir / "slurm").glob("*.slurm")):
                print(f"# {script}\n{script.read_text()}")
            print("dry run: nothing submitted")
        else:
            print(f"submitted 4 Slurm jobs (tokenize -> plan -> write -> manifest); logs under {run_dir / 'logs'}")
        return 0
    print(manifest.report(args.out))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from k2hf.pretrain.data.reader import PreparedData

    problems = PreparedData(args.dir).verify()
    for problem in problems:
        print(f"FAIL {problem}")
    print("verified: every chunk hash and count matches the manifest" if not problems else
          f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def _inspect(args: argparse.Namespace) -> int:
    from k2hf.pretrain.data.reader import PreparedData

    data = PreparedData(args.dir)
    print(data.describe_row_text(args.chunk, args.row))
    return 0


def _order(args: argparse.Namespace) -> int:
    from k2hf.analysis.order import ChunkOrder

    order = ChunkOrder.of(args.source, args.preset)
    if args.chunk is not None:
        entries = order.checkpoints_of(args.chunk)
    elif args.checkpoint is not None:
        entries = [order.chunk_of(args.checkpoint)]
    else:
        entries = order.entries
    for entry in entries:
        print(entry)
    return 0


def _import_k2(args: argparse.Namespace) -> int:
    from k2hf.pretrain.data.import_k2 import import_k2

    manifest = import_k2(args.src, args.out, chunks=args.chunks, revision=args.revision,
                         **given(args, "tokenizer", "on_error", "seq_len"))
    print(manifest.report(args.out))
    return 0


def _index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from k2hf.analysis.data_index import SLURM_SCRIPT, build_index, index_size
    from k2hf.pretrain.data.executors import slurm_settings

    out = args.out or f"{str(Path(args.dir)).rstrip('/')}.index"
    plan = build_index(args.dir, out, shards=args.shards, mem_gb=args.mem_gb, executor=args.executor,
                       tasks=args.tasks, workers=args.workers or 1, cpus_per_task=args.cpus_per_task,
                       slurm=slurm_settings({"job_name": "k2hf-index", **slurm_flags(args)}),
                       ray_address=args.ray_address, dry_run=args.dry_run)
    if plan is None:
        script = Path(out) / SLURM_SCRIPT
        if args.dry_run:
            print(f"# {script}\n{script.read_text()}")
        print("dry run: nothing submitted" if args.dry_run else
              f"submitted the shards to Slurm; rerun this command when they finish to check {out}")
        return 0
    size = index_size(out)
    print(f"indexed {size['documents']:,} rows ({size['tokens']:,} tokens) of {args.dir} in {size['shards']} "
          f"shard(s): {size['bytes'] / max(size['tokens'], 1):.2f} bytes/token on disk -> {out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import json

    from k2hf.analysis.search import DataSearch, is_cnf, parse_cnf, result_text
    from k2hf.errors import UserError

    if (args.text is None) == (args.ids is None):
        raise UserError("give the phrase to search for, or --ids (not both)")
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    search = DataSearch(args.index, data=args.data, order=args.order, tokenizer=tokenizer)
    if args.text is not None and is_cnf(args.text):
        result = search.search_cnf(parse_cnf(args.text), limit=args.limit)
    else:
        result = search.search(args.ids if args.ids is not None else args.text, limit=args.limit,
                               next_tokens=args.next)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(result_text(result, search))
    return 0
