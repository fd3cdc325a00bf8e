"""K2-Chat SFT on TRL's ``SFTTrainer``: full fine-tuning (DeepSpeed ZeRO-3 via the accelerate config) or
LoRA/QLoRA via PEFT (recipe switch).

k2hf packs the data itself (see :mod:`.packing`) and hands TRL finished rows (``input_ids``, ``labels``,
``seq_lengths``): TRL skips its own preparation and its padding-free collator turns ``seq_lengths`` into
``position_ids`` that restart per conversation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate.logging import get_logger

from k2hf.modeling import K2Config, K2ForCausalLM
from k2hf.tokenizer import save_tokenizer

from .packing import load_packed, load_sft_tokenizer
from .recipe import RecipeError, SFTRecipe

logger = get_logger(__name__)  # accelerate's: rank 0 only


def build_model(recipe: SFTRecipe):
    """The base model (K2 or LLaMA-format checkpoint), quantized for QLoRA when asked."""
    kwargs = {"dtype": torch.bfloat16 if recipe.train.get("bf16") else torch.float32}
    if recipe.lora and recipe.lora.quantize:
        if not torch.cuda.is_available():
            raise RecipeError("QLoRA (lora.quantize) needs a CUDA GPU and bitsandbytes; use plain LoRA on CPU")
        from transformers import BitsAndBytesConfig

        bits = {"4bit": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16},
                "8bit": {"load_in_8bit": True}}[recipe.lora.quantize]
        kwargs["quantization_config"] = BitsAndBytesConfig(**bits)
    return K2ForCausalLM.from_pretrained(recipe.resolve_model(recipe.model), **kwargs)


def peft_config(recipe: SFTRecipe):
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    spec = recipe.lora
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
                      task_type="CAUSAL_LM")


def sft_config(recipe: SFTRecipe):
    from trl import SFTConfig

    args = {
        "output_dir": recipe.resolve(recipe.output_dir),
        "max_length": None,  # rows are packed to recipe.max_length already
        "packing": False,
        "padding_free": True,  # one row per batch element, position_ids from seq_lengths
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "remove_unused_columns": False,
        "seed": recipe.seed,
        "bf16": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),
        "report_to": ["tensorboard"],
        "logging_dir": None,
        **recipe.train,
    }
    if args.get("bf16") and not torch.cuda.is_available():
        args["bf16"] = False  # TRL's default bf16 raises on CPU
    args = {k: v for k, v in args.items() if v is not None or k == "max_length"}
    return SFTConfig(**_checkpointing_under_installed_name(SFTConfig, args))


def _checkpointing_under_installed_name(config_class: type, args: dict) -> dict:
    """transformers 5.24 renamed ``gradient_checkpointing[_kwargs]`` to ``activation_checkpointing[_kwargs]`` (the
    old names warn), while TRL still defaults the old one to on. Recipes keep the old, documented name; it goes to
    the name the installed transformers reads, with TRL's default when the recipe says nothing."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if "activation_checkpointing" not in fields:
        return args
    args = dict(args)
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in args:
            args.setdefault(new, args.pop(old))
    args.setdefault("activation_checkpointing", fields["gradient_checkpointing"].default)
    return args


def check_model_fits(recipe: SFTRecipe) -> None:
    """Before any work: the base model exists and has positions for ``max_length``-token rows."""
    from k2hf.checkpoints import check_model_dir
    from k2hf.modeling import K2Config

    check_model_dir(recipe.resolve_model(recipe.model), tokenizer=False)
    positions = K2Config.from_pretrained(recipe.resolve_model(recipe.model)).max_position_embeddings
    if recipe.max_length > positions:
        raise RecipeError(f"max_length {recipe.max_length} exceeds the model's max_position_embeddings {positions}: "
                          "start from a checkpoint with more positions (K2's stage 2 has 8192) or lower max_length")


def train(recipe: SFTRecipe) -> Path:
    """Pack (or reuse) the data, fine-tune, and save a model that loads with AutoModelForCausalLM and chats."""
    from trl import SFTTrainer

    check_model_fits(recipe)
    dataset, report = load_packed(recipe)
    tokenizer = load_sft_tokenizer(recipe)
    rows = K2Config.from_pretrained(recipe.resolve_model(recipe.model)).vocab_size
    if len(tokenizer) > rows:  # a base tokenizer extended to a chat layout must fit the embedding
        raise RecipeError(f"the {len(tokenizer)}-token tokenizer does not fit the model's {rows} embedding rows: "
                          "start from a checkpoint with more rows (K2 has 32032) or a smaller layout")
    trainer = SFTTrainer(
        model=build_model(recipe),
        args=sft_config(recipe),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
    )
    resume = last_complete_checkpoint(Path(recipe.resolve(recipe.output_dir)))
    if resume is not None:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)  # transformers' own exact resume
    out = Path(recipe.resolve(recipe.output_dir)) / "final"
    model = trainer.model
    if recipe.lora is not None:
        # gathered from every rank (collective: partitioned under ZeRO-3), written once, by the main process
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if trainer.accelerator.is_main_process:
            model.save_pretrained(out / "adapter", state_dict=state_dict)
        model = model.merge_and_unload()  # a plain K2 checkpoint next to the adapter, for `k2hf chat`
    if trainer.accelerator.is_main_process:
        model.save_pretrained(out, safe_serialization=True)
        save_tokenizer(tokenizer, out)
        _save_history(trainer.state.log_history, Path(recipe.resolve(recipe.output_dir)))
    trainer.accelerator.wait_for_everyone()
    return out


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was saved to the end (``trainer_state.json`` is written last): a run killed
    during a save resumes from the one before, never from a half-written one."""
    found = [(int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()] if output_dir.is_dir() else []
    return max(found)[1] if found else None


def _save_history(history: list[dict], out: Path) -> None:
    """TRL's log history as JSONL and the SFT loss/grad-norm/lr curve as a PNG."""
    from k2hf.curves import plot_training_curves

    records = [{"step": h["step"], "loss": h["loss"], "grad_norm": h.get("grad_norm"), "lr": h.get("learning_rate")}
               for h in history if "loss" in h]
    (out / "sft_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_training_curves(records, out / "sft_curves.png", title=f"K2-Chat SFT ({out.name})")
