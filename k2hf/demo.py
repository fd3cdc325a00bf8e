"""``k2hf demo``: the K2 story on built-in sample data, CPU-only.

Stage 1 (this issue): build K2's tokenizer over a tiny SentencePiece base trained on the bundled samples, build a
tiny K2, save it as a Hub-style checkpoint (safetensors + remote code), reload it through
``AutoModelForCausalLM`` and chat with it. The weights are untrained, so the reply is noise; later stages add
pretraining and SFT in front of the chat.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TextStreamer


def _step(message: str) -> None:
    print(f"[k2hf demo] {message}", flush=True)


def build_demo_checkpoint(out: Path) -> Path:
    """Tokenizer + tiny K2 saved in ``out/model`` (reused when it already exists)."""
    from .tiny import build_tiny_k2, build_tiny_tokenizer

    model_dir = out / "model"
    if (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file():
        _step(f"reusing {model_dir}")
        return model_dir
    _step("building K2 tokenizer (tiny SentencePiece base trained on the bundled samples + 22 K2 tokens)")
    tokenizer = build_tiny_tokenizer(out / "sentencepiece")
    _step(f"building a tiny K2 ({len(tokenizer)} tokens)")
    model = build_tiny_k2(tokenizer)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _step(f"saved {model_dir} ({sum(p.numel() for p in model.parameters()):,} parameters, safetensors + remote code)")
    return model_dir


def run_demo(out: str | os.PathLike, prompt: str) -> Path:
    """Run the demo into ``out``; returns the checkpoint dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chat import generate_reply

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_demo_checkpoint(out)
    _step("loading it back with AutoModelForCausalLM / AutoTokenizer")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _step(f"chat (untrained weights, so expect noise): you> {prompt}")
    print("k2> ", end="", flush=True)
    generate_reply(
        model,
        tokenizer,
        [{"role": "user", "content": prompt}],
        max_new_tokens=24,
        streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
    )
    _step(f"done: checkpoint and tokenizer in {model_dir}; try `k2hf chat {model_dir}`")
    return model_dir
