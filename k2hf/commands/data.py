"""``k2hf data prepare | verify | inspect | order | import-k2``: the pretraining data."""

from __future__ import annotations

import argparse

from k2hf.indices import index_list_arg

from ._common import given


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="pretraining data: prepare, verify, inspect, order, import-k2")
    commands = data.add_subparsers(dest="data_command", required=True)

    prep = commands.add_parser("prepare", help="tokenize a mixture into evenly mixed, shuffled chunks")
    prep.add_argument("--config", required=True, help="data recipe YAML (e.g. pretrain/configs/data/sample.yaml, "
                      "or a copy from `k2hf recipes copy data/sample DIR`)")
    prep.add_argument("--out", required=True, help="a local dir or an fsspec URL (s3://bucket/k2-data)")
    prep.add_argument("--on-error", choices=["fail", "skip"], default=None, help="bad records: fail (default) or skip")
    prep.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                      help="who runs the pipeline (datatrove): this machine, a Slurm cluster, a Ray cluster")
    prep.add_argument("--tasks", type=int, default=None,
                      help="at most this many tasks per stage (default: one per source file / per chunk)")
    prep.add_argument("--workers", type=int, default=None, help="tasks run at once (default: the config's num_workers)")
    prep.add_argument("--slurm-partition", help="Slurm partition (or `slurm: {partition: ...}` in the recipe)")
    prep.add_argument("--slurm-time", help="Slurm time limit per task, e.g. 04:00:00")
    prep.add_argument("--slurm-cpus-per-task", type=int)
    prep.add_argument("--slurm-job-name")
    prep.add_argument("--slurm-env", help="shell command run before each Slurm task (e.g. 'source .venv/bin/activate')")
    prep.add_argument("--dry-run", action="store_true", help="slurm: write and print the sbatch scripts only")
    prep.add_argument("--ray-address", help="ray: the cluster to join (default: a local Ray started here)")
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


def _prepare(args: argparse.Namespace) -> int:
    from k2hf.pretrain.data.config import load_data_config
    from k2hf.pretrain.data.executors import slurm_settings
    from k2hf.pretrain.data.prepare import prepare, work_dir_for

    config = load_data_config(args.config, on_error=args.on_error, num_workers=args.workers)
    flags = {"partition": args.slurm_partition, "time": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
             "job_name": args.slurm_job_name, "env_command": args.slurm_env}
    slurm = {**config.slurm, **{k: v for k, v in flags.items() if v is not None}}
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
