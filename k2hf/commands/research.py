"""The research suite: ``k2hf checkpoints list``, ``k2hf analyze memorization``, ``k2hf eval run | sweep``,
``k2hf gallery``, ``k2hf report energy``."""

from __future__ import annotations

import argparse

from k2hf.analysis.gallery import GalleryConfig
from k2hf.analysis.memorization import MemorizationConfig
from k2hf.indices import index_list_arg
from k2hf.recipes import add_section_flags, section_flags

from ._common import add_executor_flags, add_loading_flags, execution, given, loading_kwargs

CHECKPOINTS_HELP = "all (chunk checkpoints; the default), or numbers, ranges and names: 1,5,9 / 1-4 / step_0000012"
CHECKPOINT_TASKS_HELP = "tasks (default: one per checkpoint; fewer groups checkpoints)"


def register(sub: argparse._SubParsersAction) -> None:
    ckpts = sub.add_parser("checkpoints", help="checkpoints of a run dir or Hub repo").add_subparsers(
        dest="checkpoints_command", required=True)
    ckpt_list = ckpts.add_parser("list", help="name, global step, tokens seen and chunk trained last, in order")
    ckpt_list.add_argument("source", help="a pretraining run dir, a model dir, or a Hub repo id (e.g. LLM360/K2)")
    ckpt_list.add_argument("--preset", help="chunk order of a Hub repo's ckpt_N (default: k2 for LLM360/K2)")
    ckpt_list.set_defaults(func=_checkpoints_list)

    analyze = sub.add_parser("analyze", help="research analyses across checkpoints").add_subparsers(
        dest="analyze_command", required=True)
    mem = analyze.add_parser("memorization", help="memorization score of training rows across checkpoints "
                             "(LLM360 paper 4.3)")
    mem.add_argument("--model", required=True, help="a run dir, a model dir, or a Hub repo (e.g. LLM360/K2)")
    mem.add_argument("--checkpoints", help=CHECKPOINTS_HELP)
    mem.add_argument("--data", help="prepared or imported data the rows come from (default for a run dir: its data)")
    mem.add_argument("--chunks", type=index_list_arg("chunk numbers"),
                     help="chunks to draw rows from, e.g. 3,4 (default: those the first checkpoint trained on)")
    add_section_flags(mem, MemorizationConfig)
    mem.add_argument("--preset", help="chunk order behind a Hub repo's ckpt_N (default: k2 for LLM360/K2)")
    add_loading_flags(mem)
    add_executor_flags(mem, CHECKPOINT_TASKS_HELP, gpus=True)
    mem.add_argument("--out", required=True)
    mem.set_defaults(func=_memorization)

    cont = analyze.add_parser("contamination", help="benchmark items sharing an n-gram with the training data, "
                              "and from which checkpoint on (needs `k2hf data index`)")
    _add_index_flags(cont)
    items = cont.add_mutually_exclusive_group(required=True)
    items.add_argument("--tasks", help="comma-separated lm-evaluation-harness tasks (extra `eval`)")
    items.add_argument("--items", help='JSONL items: {"id", "text"}')
    cont.add_argument("--n", type=int, default=13, help="n-gram length in tokens (13: GPT-3 / the harness)")
    cont.add_argument("--limit", type=int, help="documents per task (for quick looks)")
    cont.add_argument("--include-path", action="append", help="a folder of your own task YAMLs (repeatable)")
    cont.add_argument("--out", required=True)
    cont.set_defaults(func=_contamination)

    ev = sub.add_parser("eval", help="lm-evaluation-harness on one model (run) or on every checkpoint (sweep)")
    runs = ev.add_subparsers(dest="eval_command", required=True)
    run = runs.add_parser("run", help="evaluate one model (a model dir, or a Hub id with --revision)")
    run.add_argument("model", help="a model dir or Hub id")
    run.add_argument("--revision", help="Hub revision, e.g. ckpt_120")
    sweep = runs.add_parser("sweep", help="evaluate every checkpoint of a run dir or Hub repo (resumable)")
    sweep.add_argument("source", help="a run dir or a Hub repo (e.g. LLM360/K2)")
    sweep.add_argument("--every", type=int, help="every K-th checkpoint (default: every one)")
    sweep.add_argument("--checkpoints", help=CHECKPOINTS_HELP)
    sweep.add_argument("--watch", action="store_true", help="follow a training run: evaluate each chunk checkpoint "
                       "as it is saved, until the run ends")
    sweep.add_argument("--poll", type=float, default=60.0, help="--watch: seconds between looks at the run dir")
    sweep.add_argument("--idle-timeout", type=float, help="--watch: give up after this many seconds without a new "
                       "checkpoint (a crashed run never ends)")
    add_executor_flags(sweep, CHECKPOINT_TASKS_HELP + " (--tasks names the harness tasks here)",
                       tasks_flags=("--executor-tasks",), gpus=True)
    for parser in (run, sweep):
        add_loading_flags(parser)
        parser.add_argument("--tasks", required=True, help="comma-separated harness tasks (k2hf_mc, k2hf_text "
                            "offline)")
        parser.add_argument("--num-fewshot", type=int)
        parser.add_argument("--limit", type=int, help="documents per task (for quick looks)")
        parser.add_argument("--include-path", action="append", help="a folder of your own task YAMLs (repeatable)")
        parser.add_argument("--batch-size", type=int, help="default: 1")
        parser.add_argument("--out", required=True)
    run.set_defaults(func=_eval_run)
    sweep.set_defaults(func=_eval_sweep)

    gallery = sub.add_parser("gallery", help="every checkpoint's outputs on the same prompts and items, as one "
                             "static HTML page")
    gallery.add_argument("source", help="a run dir, a model dir, or a Hub repo (e.g. LLM360/K2)")
    gallery.add_argument("--prompts", required=True, help=".txt (one prompt per line) or JSONL with `prompt`")
    gallery.add_argument("--eval-items", help="JSONL multiple-choice items: question, choices, answer")
    gallery.add_argument("--checkpoints", help=CHECKPOINTS_HELP)
    add_section_flags(gallery, GalleryConfig)
    add_loading_flags(gallery)
    add_executor_flags(gallery, CHECKPOINT_TASKS_HELP, gpus=True)
    gallery.add_argument("--out", required=True)
    gallery.set_defaults(func=_gallery)

    trace = sub.add_parser("trace", help="spans of a model's output found verbatim in the training data, with "
                           "their first checkpoint (OLMoTrace; needs `k2hf data index`)")
    _add_index_flags(trace)
    what = trace.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="generate from this prompt (needs --model) and trace the continuation")
    what.add_argument("--text", help="trace this text")
    trace.add_argument("--model", help="a run dir, a model dir, or a Hub repo (e.g. LLM360/K2)")
    which = trace.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", help="the checkpoint to generate with: N for ckpt_N, or a name (default: "
                       "the last)")
    which.add_argument("--checkpoints", help="several, to see the traced share grow: " + CHECKPOINTS_HELP)
    trace.add_argument("--min-len", type=int, default=8, help="shortest span to report, in tokens")
    trace.add_argument("--max-count", type=int, default=100_000,
                       help="spans more frequent than this are not reported (they say little about a source)")
    trace.add_argument("--max-new-tokens", type=int, default=64)
    trace.add_argument("--sources", type=int, default=3, help="training rows shown per span")
    add_loading_flags(trace)
    add_executor_flags(trace, CHECKPOINT_TASKS_HELP, gpus=True)
    trace.add_argument("--out", required=True)
    trace.set_defaults(func=_trace)

    report = sub.add_parser("report", help="reports: energy and carbon").add_subparsers(dest="report_command",
                                                                                      required=True)
    energy = report.add_parser("energy", help="energy (MWh) and carbon (tCO2eq) of a training (K2 paper, section 5)")
    energy.add_argument("run", nargs="?", help="a pretraining run dir (GPU-hours from its step records)")
    energy.add_argument("--gpus", type=int)
    energy.add_argument("--days", type=float)
    energy.add_argument("--gpu-hours", type=float)
    energy.add_argument("--kw-per-gpu", type=float, help="default: A100's 0.34, as in the K2 paper")
    energy.add_argument("--pue", type=float, help="default: the K2 paper's 1.1")
    energy.add_argument("--t-per-mwh", type=float, help="tCO2eq per MWh (default: the K2 paper's 0.385)")
    energy.set_defaults(func=_energy)


def _checkpoints_list(args: argparse.Namespace) -> int:
    from k2hf.checkpoints import list_checkpoints, table
    from k2hf.release import order_preset

    print(table(list_checkpoints(args.source, order=order_preset(args.preset) if args.preset else None)))
    return 0


def _run_checkpoints(job, args: argparse.Namespace, report, run=None) -> int:
    """Run a per-checkpoint job on the executor the flags ask for; print ``report(merged)`` for what landed (or
    where the Slurm jobs went) and each failed checkpoint's reason. The exit code: 1 when a checkpoint failed."""
    import sys

    from k2hf.analysis.checkpoint_tasks import failures_text, run_job

    merged = run_job(job, run or execution(args))
    if merged.slurm_scripts:
        if merged.dry_run:
            print("\n".join(merged.slurm_scripts))
        print(f"dry run: nothing submitted (sbatch scripts in {args.out}/.tasks/)" if merged.dry_run else
              "submitted one Slurm task per checkpoint group and a merge job that runs after them (scripts in "
              f"{args.out}/.tasks/)")
        return 0
    if merged.path is not None:
        print(report(merged))
    if merged.failed:
        print(failures_text(merged.failed, merged.total), file=sys.stderr)
        return 1
    return 0


def _memorization(args: argparse.Namespace) -> int:
    from k2hf.analysis.memorization import memorization_job, summary_table

    config = MemorizationConfig(**section_flags(args, MemorizationConfig))
    job = memorization_job(args.model, args.out, data=args.data, chunks=args.chunks, config=config, order=args.preset,
                           **given(args, "checkpoints"), **loading_kwargs(args))
    run = execution(args)
    job.row_progress = run.in_process
    return _run_checkpoints(job, args, lambda m: f"{summary_table(m.value)}\nscores, summary and plots -> {args.out}",
                            run)


def _harness_options(args: argparse.Namespace) -> tuple[list[str], dict]:
    tasks = [t for t in args.tasks.split(",") if t]
    return tasks, {"num_fewshot": args.num_fewshot, "limit": args.limit, "include_path": args.include_path,
                   **given(args, "batch_size")}


def _eval_run(args: argparse.Namespace) -> int:
    from k2hf.analysis.evaluation import results_lines, run_eval

    tasks, options = _harness_options(args)
    record = run_eval(args.model, tasks, args.out, revision=args.revision, **options, **loading_kwargs(args))
    print(results_lines(record))
    print(f"results: {args.out}/results.json")
    return 0


def _eval_sweep(args: argparse.Namespace) -> int:
    from k2hf.analysis.evaluation import EvalSweep, sweep_checkpoints, watch_sweep
    from k2hf.errors import UserError

    tasks, options = _harness_options(args)
    if args.watch:
        if args.checkpoints or args.executor != "local" or args.executor_tasks or (args.workers or 1) > 1:
            raise UserError("--watch evaluates each chunk checkpoint here as it is saved: drop --checkpoints and "
                            "the executor flags (or sweep the finished run with them)")
        path = watch_sweep(args.source, tasks, args.out, poll=args.poll, idle_timeout=args.idle_timeout,
                           **given(args, "every"), **options, load_kwargs=loading_kwargs(args))
        print(f"sweep: {path} and {path.with_name('sweep.png')} (the run has ended)")
        return 0
    job = EvalSweep(args.source, args.out, sweep_checkpoints(args.source, **given(args, "every", "checkpoints")),
                    tasks, **options, load_kwargs=loading_kwargs(args))
    return _run_checkpoints(job, args, lambda m: f"sweep: {m.path} and {m.path.with_name('sweep.png')}")


def _gallery(args: argparse.Namespace) -> int:
    from k2hf.analysis.gallery import gallery_job, read_items, read_prompts

    config = GalleryConfig(**section_flags(args, GalleryConfig))
    job = gallery_job(args.source, args.out, read_prompts(args.prompts),
                      read_items(args.eval_items) if args.eval_items else None, config=config,
                      **given(args, "checkpoints"), **loading_kwargs(args))
    return _run_checkpoints(job, args, lambda m: f"gallery: {m.path} (and gallery.jsonl beside it)")


def _energy(args: argparse.Namespace) -> int:
    from k2hf.analysis.energy import Energy, gpu_hours, run_energy
    from k2hf.errors import UserError

    factors = given(args, "kw_per_gpu", "pue", "t_per_mwh")
    if args.run is None:
        print(Energy(gpu_hours(args.gpus, args.days, args.gpu_hours), **factors).report())
        return 0
    if args.gpus is not None or args.days is not None or args.gpu_hours is not None:
        raise UserError("a run dir brings its own GPU-hours: drop --gpus/--days/--gpu-hours")
    print(run_energy(args.run, **factors).report())
    return 0


def _add_index_flags(parser: argparse.ArgumentParser) -> None:
    """The index to query, and where the data and first checkpoints come from."""
    parser.add_argument("--index", required=True, help="an index dir from `k2hf data index`")
    parser.add_argument("--data", help="the indexed data dir, if it moved since indexing")
    parser.add_argument("--order", help="first checkpoints from: a run dir (what it did), a data dir, or a preset "
                        "(k2) (default: the indexed data's order; for `trace --model RUN_DIR`, that run's)")


def _trace(args: argparse.Namespace) -> int:
    from pathlib import Path

    from k2hf.analysis.memorization import select_checkpoints
    from k2hf.analysis.search import DataSearch
    from k2hf.analysis.trace import TraceCheckpoints, trace_text, write_trace
    from k2hf.checkpoints import list_checkpoints
    from k2hf.errors import UserError
    from k2hf.formats import RunDir

    if args.prompt is not None and not args.model:
        raise UserError("--prompt needs --model (the model that continues it); or trace a --text")
    order = args.order
    if order is None and args.model and RunDir.is_run_dir(Path(args.model)):
        order = args.model  # what that run actually trained, rollbacks included
    search = DataSearch(args.index, data=args.data, order=order)  # checks the index before any task starts
    options = {"min_len": args.min_len, "max_count": args.max_count, "sources": args.sources}
    settings = {"min_len": args.min_len, "max_count": args.max_count}
    if args.text is not None:
        trace = trace_text(search, args.text, **options)
        path = write_trace([trace], search, args.out, settings)
        print(f"text: {_traced(trace)}\ntrace: {path} and {path.with_name('trace.html')}")
        return 0
    selected = select_checkpoints(list_checkpoints(args.model), args.checkpoints or args.checkpoint or "last")
    job = TraceCheckpoints(args.model, args.out, selected, args.index, args.data, order, args.prompt,
                           args.max_new_tokens, options, settings, loading_kwargs(args), search=search)
    return _run_checkpoints(job, args, lambda m: "\n".join(
        [f"{t.checkpoint}: {_traced(t)}" for t in m.value] + [f"trace: {m.path} and {m.path.with_name('trace.html')}"]))


def _traced(trace) -> str:
    return f"{100 * trace.traced_share:.1f}% of {len(trace.ids)} tokens traced in {len(trace.spans)} span(s)"


def _contamination(args: argparse.Namespace) -> int:
    from k2hf.analysis.contamination import analyze_contamination, read_items, summary_text, task_items
    from k2hf.analysis.search import DataSearch

    search = DataSearch(args.index, data=args.data, order=args.order)
    if args.items:
        items = {"items": read_items(args.items)}
    else:
        items = task_items([t for t in args.tasks.split(",") if t], args.include_path, args.limit)
    record = analyze_contamination(search, items, args.out, n=args.n)
    print(summary_text(record))
    print(f"per item: {args.out}/contamination.csv, contamination.json; plot: contamination.png")
    return 0
