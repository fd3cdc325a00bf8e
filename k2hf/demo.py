"""``k2hf demo``: the whole K2 story on the bundled sample data, CPU-only, in 1-2 minutes (after the install).

1. A tokenizer in today's K2-Chat layout (``k2_chat``: a tiny SentencePiece base trained on the samples + the 28
   K2-Chat tokens) and the pretraining data sequence: 4 chunks of 64-token rows (stage 1) and 2 chunks of
   128-token rows (stage 2);
2. pretraining a tiny K2 over the chunks, one checkpoint per chunk, with loss-spike detection on and the drill
   (a data fault on chunk 2 drives a malignant spike; the run rolls back and defers the chunk);
3. the stage-2 context extension (longer rows, RoPE theta 500000) from the stage-1 final checkpoint;
4. K2-Chat SFT on the bundled OpenHermes / FLAN / Do-Not-Answer / messages samples, packed with TRL;
5. a chat with the result.

Everything lands in ``outputs/demo`` with a ``SUMMARY.md`` saying where; a second run reuses finished stages.
The model is tiny and sees a few thousand tokens, so its replies are only word salad in the right format.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# spike detection sized for a 36-step run, and the drill: chunk 2 reads as random tokens until the first rollback
DEMO_SPIKES = {"window": 8, "malignant_steps": 4, "recovery_steps": 2, "min_delta": 0.3}
DRILL_CHUNK = 2


def _step(message: str) -> None:
    print(f"\n[k2hf demo] {message}", flush=True)


def _reset_accelerate() -> None:
    """Each stage builds its own Accelerator in this one process."""
    from .pretrain.trainer import reset_accelerate_state

    reset_accelerate_state()


def _config_path(name: str) -> Path:
    """A bundled recipe (shipped in the package: the demo runs from a wheel as from a checkout)."""
    from .bundled import find_recipe

    return find_recipe(name).path


def prepare_data(out: Path) -> dict[str, Path]:
    from .pretrain.data.config import load_data_config
    from .pretrain.data.prepare import prepare
    from .pretrain.data.reader import PreparedData

    dirs = {}
    for stage, recipe in (("stage1", "data/sample"), ("stage2", "data/sample_stage2")):
        target = out / "data" / stage
        if (target / "manifest.json").is_file() and not PreparedData(target).verify():
            _step(f"reusing verified data {target}")
        else:
            _step(f"preparing {stage} data ({recipe}): tokenize, cut rows, deal into chunks")
            shutil.rmtree(target, ignore_errors=True)
            prepare(load_data_config(_config_path(recipe)), target)
        dirs[stage] = target
    return dirs


def pretrain(out: Path, data: dict[str, Path]) -> Path:
    from .pretrain.config import load_train_config
    from .pretrain.launch import run

    stage1_dir, stage2_dir = out / "pretrain" / "stage1", out / "pretrain" / "stage2"
    spikes = {"spikes.enabled": True, "spikes.drill_poison_chunk": DRILL_CHUNK,
              **{f"spikes.{key}": value for key, value in DEMO_SPIKES.items()}}
    _step("pretraining stage 1 (tiny K2 on 64-token rows where K2 used 2048; a checkpoint per chunk; spike "
          f"detection on, with a drilled data fault: chunk {DRILL_CHUNK} reads as random tokens until the first "
          "rollback, as a bad chunk drove K2's malignant spikes)")
    run(load_train_config(_config_path("pretrain/tiny_stage1"), {
        "data": str(data["stage1"]), "output_dir": str(stage1_dir), "global_batch_tokens": 128,
        "micro_batch_size": 1, **spikes}))
    _reset_accelerate()
    final1 = _last_checkpoint(stage1_dir)
    _step(f"stage 2: context extension from {final1.name} (128-token rows, RoPE theta 500000, linear decay to 0)")
    run(load_train_config(_config_path("pretrain/tiny_stage2"), {
        "data": str(data["stage2"]), "output_dir": str(stage2_dir), "model.init_from": str(final1),
        "global_batch_tokens": 256, "micro_batch_size": 1}))
    _reset_accelerate()
    return _last_checkpoint(stage2_dir)


def _last_checkpoint(run_dir: Path) -> Path:
    from .formats import RunDir

    found = RunDir(run_dir).latest_checkpoint()
    if found is None:
        raise RuntimeError(f"no checkpoint in {run_dir}")
    return found.path


def finetune(out: Path, base: Path) -> Path:
    from .finetune.launch import run
    from .finetune.recipe import load_recipe

    sft_dir = out / "sft"
    final = sft_dir / "final"
    if (final / "config.json").is_file():
        _step(f"reusing SFT model {final}")
        return final
    _step("K2-Chat SFT: adapt OpenHermes / FLAN / Do-Not-Answer / messages samples, pack 256-token rows, train")
    recipe = load_recipe(_config_path("sft/tiny"), {
        "model": str(base), "output_dir": str(sft_dir), "train.report_to": ["tensorboard"]})
    result = run(recipe)
    _reset_accelerate()
    return result


def run_demo(out: str | os.PathLike, prompt: str) -> Path:
    """Run (or resume) the demo into ``out``; returns the chat model's directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chat import ReplyStreamer, generate_reply
    from .pretrain.config import SpikeSection
    from .pretrain.spikes import analyze, format_table

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out)
    base = pretrain(out, data)
    spikes, spike_png = analyze(out / "pretrain" / "stage1", SpikeSection(**DEMO_SPIKES),
                                out / "pretrain" / "stage1" / "spikes.png")
    _step("spike analysis of stage 1:\n" + format_table(spikes))
    model_dir = finetune(out, base)
    _step(f"chat with {model_dir}: you> {prompt}")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    print("k2> ", end="", flush=True)
    reply = generate_reply(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens=32,
                           streamer=ReplyStreamer(tokenizer))
    summary = _write_summary(out, data, base, model_dir, spikes, spike_png, prompt, reply)
    _step(f"done. Everything is in {out}; read {summary.name} first. Try `k2hf chat {model_dir}`.")
    return model_dir


def _write_summary(out: Path, data: dict, base: Path, model_dir: Path, spikes: list[dict], spike_png, prompt: str,
                   reply: str) -> Path:
    from .formats import RunDir
    from .formats.prepared_data import Manifest
    from .pretrain.spikes import spike_title

    manifest = Manifest.read(data["stage1"])
    report = json.loads((out / "sft" / "packed" / "report.json").read_text())
    metrics = RunDir(out / "pretrain" / "stage1").metrics.read()
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    lines = [
        "# k2hf demo: what happened and where it is",
        "",
        f"1. **Data** `{rel(data['stage1'])}`: {manifest.total_rows} rows x {manifest.seq_len} tokens in "
        f"{manifest.num_chunks} chunks (`manifest.json`, verify with `k2hf data verify {rel(data['stage1'])}`); "
        f"stage-2 data in `{rel(data['stage2'])}`.",
        f"2. **Pretraining stage 1** `pretrain/stage1`: {len(metrics)} steps, loss {metrics[0]['loss']:.3f} -> "
        f"{metrics[-1]['loss']:.3f}; checkpoints `pretrain/stage1/checkpoints/ckpt_001..`; curves "
        f"`pretrain/stage1/training_curves.png`; {spike_title(spikes, metrics)} (the drill; `{rel(spike_png)}`; "
        "`pretrain/stage1/spikes/` holds the diverged model); data sequence `pretrain/stage1/data_sequence.jsonl` "
        "(`k2hf data order pretrain/stage1` shows the order the rollback changed).",
        f"3. **Stage 2** (context extension): final checkpoint `{rel(base)}`.",
        f"4. **SFT**: {report['documents']} conversations packed into {report['rows']} rows (fill "
        f"{report['fill_ratio']:.3f}, {report['trained_fraction']:.0%} of tokens trained); report "
        f"`sft/packed/report.json`; curves `sft/sft_curves.png`; model `{rel(model_dir)}`.",
        f"5. **Chat**: you> {prompt}  \n   k2> {reply}",
        "",
        "TensorBoard: `tensorboard --logdir " + str(out) + "`",
    ]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(lines) + "\n")
    return path
