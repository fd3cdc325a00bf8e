"""``k2hf`` command line: a thin dispatcher. Each subcommand imports its implementation only when it runs."""

from __future__ import annotations

import argparse
import os
import sys


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The options the user gave (flags default to None): everything else takes the library's own default,
    stated once, where it is implemented."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _chat(args: argparse.Namespace) -> int:
    from .chat import ReplyStreamer, chat_loop, generate_reply, load_chat_model

    tools = _read_tools(args.tools) if args.tools else None
    model, tokenizer = load_chat_model(args.model, device=args.device, revision=args.revision)
    if args.prompt is None:
        chat_loop(model, tokenizer, args.system, tools=tools, **_given(args, "max_new_tokens", "temperature"))
        return 0
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    if tools:
        from .chat import generate_message, show_message

        show_message(generate_message(model, tokenizer, messages, tools=tools,
                                      **_given(args, "max_new_tokens", "temperature")))
        return 0
    streamer = ReplyStreamer(tokenizer)
    generate_reply(model, tokenizer, messages, streamer=streamer, **_given(args, "max_new_tokens", "temperature"))
    return 0


def _read_tools(path: str) -> list:
    import json

    from .errors import UserError

    try:
        with open(path, encoding="utf-8") as file:
            tools = json.load(file)
    except (OSError, ValueError) as error:
        raise UserError(f"--tools {path}: cannot read a JSON list of function definitions ({error})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise UserError(f"--tools {path}: expected a JSON list of function definitions (JSON schema objects)")
    return tools


def _export(args: argparse.Namespace) -> int:
    from .conversion import export_to_llama

    out = export_to_llama(args.model, args.out)
    print(f"wrote a model_type=llama checkpoint to {out}")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer import build_k2_tokenizer, save_tokenizer

    tokenizer = build_k2_tokenizer(args.base, layout=args.layout)
    save_tokenizer(tokenizer, args.out)
    print(f"wrote K2 tokenizer, layout {args.layout} ({len(tokenizer)} tokens) to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, prompt=args.prompt)
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from .pretrain.data.config import load_data_config
    from .pretrain.data.executors import slurm_settings
    from .pretrain.data.prepare import prepare, work_dir_for

    config = load_data_config(args.config, on_error=args.on_error, num_workers=args.workers)
    slurm = {**config.slurm, **{k: v for k, v in (("partition", args.slurm_partition), ("time", args.slurm_time),
                                                  ("cpus_per_task", args.slurm_cpus_per_task),
                                                  ("job_name", args.slurm_job_name), ("env_command", args.slurm_env))
                                if v is not None}}
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


def _data_verify(args: argparse.Namespace) -> int:
    from .pretrain.data.reader import PreparedData

    problems = PreparedData(args.dir).verify()
    for problem in problems:
        print(f"FAIL {problem}")
    print("verified: every chunk hash and count matches the manifest" if not problems else
          f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def _data_inspect(args: argparse.Namespace) -> int:
    from .pretrain.data.reader import PreparedData

    data = PreparedData(args.dir)
    tokenizer = data.tokenizer()
    ids = data.chunk(args.chunk).row(args.row)
    print(f"chunk {args.chunk} row {args.row} ({len(ids)} tokens)")
    for piece in data.describe_row(args.chunk, args.row):
        a, b = piece["position"]
        known = ", ".join(f"{label} {piece[key]}" for key, label in (
            ("repeat_pass", "pass"), ("fim", "fim"), ("document_tokens", "document tokens")) if piece[key] is not None)
        print(f"--- [{a}:{b}] {piece['subset']} {piece['source']} {_where(piece['source'], piece['record'])} ({known})")
        print(tokenizer.decode(ids[a:b]))
    return 0


def _where(source: str, record: int) -> str:
    """Positions shown to people are 1-based, like editors' line numbers: ``line 81`` of a text/JSONL file (the
    stored, 0-based record index 80), ``record 81`` of any other source."""
    unit = "line" if source.endswith((".jsonl", ".json", ".txt")) else "record"
    return f"{unit} {record + 1}"


def _data_order(args: argparse.Namespace) -> int:
    from .analysis.order import ChunkOrder

    order = ChunkOrder.of(args.source, args.preset)
    if args.chunk is not None:
        entries = order.checkpoints_of(args.chunk)
    elif args.checkpoint is not None:
        entries = [order.chunk_of(args.checkpoint)]
    else:
        entries = order.entries
    for e in entries:
        step = f" (step {e.global_step})" if e.global_step is not None else ""
        planned = f"  [planned: chunk {e.planned_chunk}]" if e.planned_chunk not in (None, e.chunk) else ""
        print(f"{e.name} <- chunk {e.chunk}{step}{planned}")
    return 0


def _checkpoints_list(args: argparse.Namespace) -> int:
    from .checkpoints import list_checkpoints
    from .release import order_preset

    checkpoints = list_checkpoints(args.source, order=order_preset(args.preset) if args.preset else None)
    print(f"{'name':<24} {'kind':<15} {'step':>9} {'tokens seen':>14} {'chunk':>6}  load with")
    for c in checkpoints:
        load = c.location if c.path is None else str(c.path)
        print(f"{c.name:<24} {c.kind:<15} {_dash(c.global_step):>9} {_dash(c.tokens_seen):>14} {_dash(c.chunk):>6}  "
              f"{load}")
    return 0


def _dash(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)


def _data_import_k2(args: argparse.Namespace) -> int:
    from .pretrain.data.import_k2 import import_k2

    manifest = import_k2(args.src, args.out, chunks=_int_list(args.chunks), revision=args.revision,
                         **_given(args, "tokenizer", "on_error", "seq_len"))
    print(manifest.report(args.out))
    return 0


def _int_list(text: str | None) -> list[int] | None:
    """``"3,4,10-12"`` -> ``[3, 4, 10, 11, 12]``."""
    if text is None:
        return None
    from .errors import UserError

    values = []
    for part in text.split(","):
        a, dash, b = part.strip().partition("-")
        try:
            values += range(int(a), int(b) + 1) if dash else [int(a)]
        except ValueError:
            raise UserError(f"{text!r} is not a list of chunk numbers such as 3,4,10-12") from None
    return values


def _analyze_memorization(args: argparse.Namespace) -> int:
    from .analysis.memorization import MemorizationConfig, analyze_memorization

    config = MemorizationConfig(include_untrained=args.include_untrained, **_given(
        args, "prompt_tokens", "continuation_tokens", "samples", "seed", "batch_size"))
    summary = analyze_memorization(args.model, args.out, data=args.data, chunks=_int_list(args.chunks),
                                   config=config, order=args.preset, device=args.device,
                                   **_given(args, "checkpoints", "dtype"))
    print(f"{'checkpoint':<24} {'rows':>6} {'mean score':>11} {'full match':>11}")
    for name, stats in summary["checkpoints"].items():
        print(f"{name:<24} {stats['rows']:>6} {stats['mean_score']:>11.4f} {stats['full_match_rate']:>11.2%}")
    print(f"scores, summary and plots -> {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .analysis.evaluation import run_eval, sweep
    from .errors import UserError

    tasks = [t for t in args.tasks.split(",") if t]
    common = {"num_fewshot": args.num_fewshot, "limit": args.limit, "include_path": args.include_path,
              **_given(args, "batch_size")}
    if args.model == "sweep":
        if args.source is None:
            raise UserError("k2hf eval sweep needs SOURCE: a run dir or a Hub repo")
        path = sweep(args.source, tasks, args.out, **_given(args, "every", "checkpoints"), **common)
        print(f"sweep: {path} and {path.with_name('sweep.png')}")
        return 0
    if args.source is not None:
        raise UserError(f"unexpected argument {args.source!r} (k2hf eval MODEL ..., or k2hf eval sweep SOURCE ...)")
    record = run_eval(args.model, tasks, args.out, revision=args.revision, **common)
    for task, metrics in record["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4g}" for k, v in metrics.items()
                          if "," in k and isinstance(v, float) and "stderr" not in k)
        print(f"{task}: {shown}")
    print(f"results: {args.out}/results.json")
    return 0


def _gallery(args: argparse.Namespace) -> int:
    from .analysis.gallery import GalleryConfig, build_gallery, read_items, read_prompts

    config = GalleryConfig(**_given(args, "max_new_tokens", "temperature", "seed"))
    page = build_gallery(args.source, args.out, read_prompts(args.prompts),
                         read_items(args.eval_items) if args.eval_items else None, config=config,
                         **_given(args, "checkpoints"))
    print(f"gallery: {page} (and gallery.jsonl beside it)")
    return 0


def _report_energy(args: argparse.Namespace) -> int:
    from .analysis.energy import Energy, gpu_hours, run_energy

    factors = _given(args, "kw_per_gpu", "pue", "t_per_mwh")
    shown = Energy(0.0, **factors)  # the factors in force: the given ones, else the K2 paper's
    print(f"factors: {shown.kw_per_gpu} kW per GPU, PUE {shown.pue}, {shown.t_per_mwh} tCO2eq per MWh")
    if args.run is None:
        energy = Energy(gpu_hours(args.gpus, args.days, args.gpu_hours), **factors)
        mwh = round(energy.mwh, 1)  # carbon from the MWh as reported, the K2 paper's convention
        print(f"{energy.gpu_hours:,.1f} GPU-hours: {mwh:,.1f} MWh, {mwh * energy.t_per_mwh:,.1f} tCO2eq")
        return 0
    if args.gpus is not None or args.days is not None or args.gpu_hours is not None:
        from .errors import UserError

        raise UserError("a run dir brings its own GPU-hours: drop --gpus/--days/--gpu-hours")
    report = run_energy(args.run, **factors)
    for key, label in (("trained", f"steps kept ({report['steps']})"),
                       ("rolled_back", f"steps rolled back by spike handling ({report['rolled_back_steps']})"),
                       ("total", "total")):
        e = report[key]
        print(f"{label:<48} {e.gpu_hours:>12.6f} GPU-hours {e.mwh:>12.9f} MWh {e.tco2eq:>12.9f} tCO2eq")
    return 0


def _spikes_analyze(args: argparse.Namespace) -> int:
    from .pretrain.spikes import analysis_settings, analyze, format_table

    config = analysis_settings(args.source, window=args.window, threshold=args.threshold, min_delta=args.min_delta,
                               recovery_steps=args.recovery_steps, malignant_steps=args.malignant_steps)
    spikes, png = analyze(args.source, config, args.out)
    print(format_table(spikes))
    if png:
        print(f"plot: {png}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .pretrain.train import main as pretrain_main

    return pretrain_main(["--config", args.config, "--set", *args.set])


def _sft_pack(args: argparse.Namespace) -> int:
    from .finetune.packing import pack
    from .finetune.recipe import load_recipe
    from .recipes import parse_overrides

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    report = pack(recipe, args.out)
    print(f"packed {report['documents']} conversations into {report['rows']} rows of <= {report['max_length']} "
          f"tokens (fill {report['fill_ratio']:.3f}, trained tokens {report['trained_fraction']:.1%}) -> "
          f"{args.out or recipe.packed_path}")
    for source in report["sources"]:
        rejected = ", ".join(f"{k} {v}" for k, v in source["rejected"].items()) or "none"
        print(f"  {source['name']}: {source['read']} read, rejected: {rejected}; {source['drawn']} drawn "
              f"(target {source['target']}), overlong: {source['overlong'] or 'none'}")
    return 0


def _sft_train(args: argparse.Namespace) -> int:
    from .finetune.sft import main as sft_main

    return sft_main(["--recipe", args.recipe, "--set", *args.set])


class _OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (usage stays behind --help), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="k2hf", description="LLM360 K2 on the Hugging Face stack.")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="chat with a K2 checkpoint (interactive, or one shot with --prompt)")
    chat.add_argument("model", help="checkpoint dir or Hub id (K2 or LLaMA format)")
    chat.add_argument("--prompt", help="one user message; print the streamed reply and exit")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--tools", help="JSON file: a list of function definitions (JSON schema); the model's calls "
                                      "are shown (K2-Chat 10/31/24 function calling)")
    chat.add_argument("--max-new-tokens", type=int, help="default: 256")
    chat.add_argument("--temperature", type=float, help="0 = greedy (the default)")
    chat.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the weights load)")
    chat.add_argument("--revision", default=None, help="Hub revision, e.g. ckpt_360")
    chat.set_defaults(func=_chat)

    export = sub.add_parser("export", help="write a plain model_type=llama copy of a K2 checkpoint")
    export.add_argument("model", help="K2 checkpoint dir")
    export.add_argument("--to", choices=["llama"], default="llama")
    export.add_argument("out", help="output dir")
    export.set_defaults(func=_export)

    tok = sub.add_parser("tokenizer", help="build K2's tokenizer from a LLaMA SentencePiece tokenizer.model")
    tok.add_argument("base", help="tokenizer.model or a dir holding it")
    tok.add_argument("out", help="output dir")
    tok.add_argument("--layout", choices=["k2", "k2_chat_060124", "k2_chat"], default="k2_chat",
                     help="which released layout: k2 (LLM360/K2 base), k2_chat_060124, k2_chat (LLM360/K2-Chat "
                          "today, with tool tokens; default)")
    tok.set_defaults(func=_tokenizer)

    data = sub.add_parser("data", help="pretraining data: prepare, verify, inspect, order").add_subparsers(
        dest="data_command", required=True)
    prep = data.add_parser("prepare", help="tokenize a mixture into evenly mixed, shuffled chunks")
    prep.add_argument("--config", required=True, help="data recipe YAML (e.g. pretrain/configs/data/sample.yaml)")
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
    prep.set_defaults(func=_data_prepare)
    verify = data.add_parser("verify", help="re-hash chunks and check the manifest's counts")
    verify.add_argument("dir")
    verify.set_defaults(func=_data_verify)
    inspect = data.add_parser("inspect", help="decode a row and show where each piece came from")
    inspect.add_argument("dir")
    inspect.add_argument("--chunk", type=int, required=True)
    inspect.add_argument("--row", type=int, required=True)
    inspect.set_defaults(func=_data_inspect)
    order = data.add_parser("order", help="which chunk each checkpoint was trained on (and the reverse)")
    order.add_argument("source", nargs="?", help="a prepared data dir, or a pretraining run dir (what the run did)")
    order.add_argument("--preset", help="a built-in order instead of a source: k2 (K2's real order)")
    which = order.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=int, help="1-based checkpoint number (ckpt_001 = 1)")
    which.add_argument("--chunk", type=int, help="the reverse: which checkpoint finished this chunk")
    order.set_defaults(func=_data_order)

    imp = data.add_parser("import-k2", help="LLM360's released K2 data chunks -> k2hf prepared data (bit for bit)")
    imp.add_argument("src", help="a dir of chunk_<i>.jsonl files, or the Hub dataset LLM360/K2Datasets (streamed)")
    imp.add_argument("--out", required=True)
    imp.add_argument("--chunks", help="which chunks, e.g. 0-15,32 (default: all 360)")
    imp.add_argument("--tokenizer", help="K2 tokenizer: a dir, or a Hub repo (default LLM360/K2)")
    imp.add_argument("--on-error", choices=["fail", "skip"],
                     help="malformed rows: stop naming file and line (default), or skip and count per reason")
    imp.add_argument("--revision", default=None, help="Hub revision of the dataset")
    imp.add_argument("--seq-len", type=int, help="tokens per released row (default: K2's 2048)")
    imp.set_defaults(func=_data_import_k2)

    analyze_cmd = sub.add_parser("analyze", help="research analyses across checkpoints").add_subparsers(
        dest="analyze_command", required=True)
    mem = analyze_cmd.add_parser("memorization", help="memorization score of training rows across checkpoints "
                                 "(LLM360 paper 4.3)")
    mem.add_argument("--model", required=True, help="a run dir, a model dir, or a Hub repo (e.g. LLM360/K2)")
    mem.add_argument("--checkpoints", help="all (chunk checkpoints; the default), or numbers/names: 1,5,9")
    mem.add_argument("--data", help="prepared or imported data the rows come from (default for a run dir: its data)")
    mem.add_argument("--chunks", help="chunks to draw rows from, e.g. 3,4 (default: those the first checkpoint "
                     "trained on)")
    mem.add_argument("--samples", type=int, help="rows per checkpoint (default: 1000, as Analysis360)")
    mem.add_argument("--seed", type=int, help="default: 42")
    mem.add_argument("--prompt-tokens", type=int, help="default: 32")
    mem.add_argument("--continuation-tokens", type=int, help="default: 32")
    mem.add_argument("--batch-size", type=int, help="default: 64")
    mem.add_argument("--include-untrained", action="store_true", help="also rows the checkpoint has not trained on")
    mem.add_argument("--preset", help="chunk order behind a Hub repo's ckpt_N (default: k2 for LLM360/K2)")
    mem.add_argument("--device", default=None, help="e.g. cuda (default: where from_pretrained puts it)")
    mem.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's)")
    mem.add_argument("--out", required=True)
    mem.set_defaults(func=_analyze_memorization)

    ckpts = sub.add_parser("checkpoints", help="checkpoints of a run dir or Hub repo").add_subparsers(
        dest="checkpoints_command", required=True)
    ckpt_list = ckpts.add_parser("list", help="name, global step, tokens seen and chunk trained last, in order")
    ckpt_list.add_argument("source", help="a pretraining run dir, a model dir, or a Hub repo id (e.g. LLM360/K2)")
    ckpt_list.add_argument("--preset", help="chunk order of a Hub repo's ckpt_N (default: k2 for LLM360/K2)")
    ckpt_list.set_defaults(func=_checkpoints_list)

    spikes = sub.add_parser("spikes", help="loss-spike analysis").add_subparsers(dest="spikes_command", required=True)
    analyze = spikes.add_parser("analyze", help="table + PNG of benign/malignant spikes of a run or a CSV/JSONL curve")
    analyze.add_argument("source", help="a pretraining run dir, or a CSV/JSONL with step, loss, grad_norm")
    analyze.add_argument("--out", help="PNG path (default: spikes_analysis.png beside the source)")
    for flag, kind in (("--window", int), ("--threshold", float), ("--min-delta", float), ("--recovery-steps", int),
                       ("--malignant-steps", int)):
        analyze.add_argument(flag, type=kind, help="default: the run's own setting (recorded at its start), else "
                             "the pretraining recipe's `spikes:` default")
    analyze.set_defaults(func=_spikes_analyze)

    ev = sub.add_parser("eval", help="lm-evaluation-harness on a model (k2hf eval MODEL) or on every checkpoint "
                        "(k2hf eval sweep SOURCE)")
    ev.add_argument("model", help="a model dir or Hub id; or `sweep` followed by a run dir / Hub repo")
    ev.add_argument("source", nargs="?", help="with `sweep`: the run dir or Hub repo")
    ev.add_argument("--tasks", required=True, help="comma-separated harness tasks (k2hf_mc, k2hf_text offline)")
    ev.add_argument("--revision", help="Hub revision, e.g. ckpt_120")
    ev.add_argument("--num-fewshot", type=int)
    ev.add_argument("--limit", type=int, help="documents per task (for quick looks)")
    ev.add_argument("--include-path", action="append", help="a folder of your own task YAMLs (repeatable)")
    ev.add_argument("--batch-size", type=int, help="default: 1")
    ev.add_argument("--every", type=int, help="sweep: every K-th checkpoint (default: every one)")
    ev.add_argument("--checkpoints", help="sweep: all (the default), or numbers/names: 1,5,9")
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=_eval)

    gallery = sub.add_parser("gallery", help="every checkpoint's outputs on the same prompts and items, as one "
                             "static HTML page")
    gallery.add_argument("source", help="a run dir, a model dir, or a Hub repo (e.g. LLM360/K2)")
    gallery.add_argument("--prompts", required=True, help=".txt (one prompt per line) or JSONL with `prompt`")
    gallery.add_argument("--eval-items", help="JSONL multiple-choice items: question, choices, answer")
    gallery.add_argument("--checkpoints", help="all (chunk checkpoints; the default), or numbers/names: 1,5,9")
    gallery.add_argument("--max-new-tokens", type=int, help="default: 32")
    gallery.add_argument("--temperature", type=float, help="0 = greedy (the default); > 0 samples with --seed")
    gallery.add_argument("--seed", type=int, help="default: 0")
    gallery.add_argument("--out", required=True)
    gallery.set_defaults(func=_gallery)

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
    energy.set_defaults(func=_report_energy)

    pretrain = sub.add_parser("pretrain", help="run pretraining in this process (multi-GPU: accelerate launch "
                              "pretrain/train.py)")
    pretrain.add_argument("--config", required=True)
    pretrain.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    pretrain.set_defaults(func=_pretrain)

    sft = sub.add_parser("sft", help="K2-Chat SFT: pack the data, train").add_subparsers(dest="sft_command",
                                                                                        required=True)
    sft_pack = sft.add_parser("pack", help="all the data work of a recipe: packed Arrow dataset + report")
    sft_pack.add_argument("--recipe", required=True)
    sft_pack.add_argument("--out", default=None, help="default: the recipe's packed_dir")
    sft_pack.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    sft_pack.set_defaults(func=_sft_pack)
    sft_train = sft.add_parser("train", help="fine-tune in this process (multi-GPU: accelerate launch finetune/sft.py)")
    sft_train.add_argument("--recipe", required=True)
    sft_train.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    sft_train.set_defaults(func=_sft_train)

    demo = sub.add_parser("demo", help="the K2 story on built-in sample data, on CPU")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--prompt", default="What is the highest mountain in Africa?")
    demo.set_defaults(func=_demo)

    from .commands import recipes

    recipes.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the full traceback of user errors too")
    args = parser.parse_args(argv)
    from .console import configure_logging
    from .errors import UserError, hub_access_problem

    configure_logging()

    debug = args.debug or os.environ.get("K2HF_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("k2hf: interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except UserError as error:  # something the user can fix: one line, exit 2 (K2HF_DEBUG=1 for the traceback)
        if debug:
            raise
        print(f"k2hf: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a Hub repo that cannot be reached or found is a user matter too
        problem = hub_access_problem(error)
        if problem is None or debug:
            raise
        print(f"k2hf: error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
