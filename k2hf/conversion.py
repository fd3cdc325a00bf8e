"""Convert K2 checkpoints to plain LLaMA checkpoints (for vLLM, llama.cpp and other LLaMA-only tools).

K2's parameter names are LLaMA's, so the weights are copied byte for byte and only the config changes: the
export scales to the 65B checkpoints without loading a single tensor.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import LlamaConfig

from .modeling import K2Config

WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def k2_to_llama_config(config: K2Config) -> LlamaConfig:
    """The ``LlamaConfig`` that describes the same network as ``config``."""
    fields = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        fields.pop(key, None)
    llama = LlamaConfig(**fields)
    llama.architectures = ["LlamaForCausalLM"]
    return llama


def export_to_llama(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a ``model_type: llama`` copy of the K2 checkpoint in ``src`` to ``out`` (safetensors only)."""
    src, out = Path(src), Path(out)
    weights = sorted(p for p in src.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not any(p.name.endswith(".safetensors") for p in weights):
        bins = [p.name for p in src.glob("*.bin")]
        hint = f" (found {bins}: re-save with safe_serialization)" if bins else ""
        raise FileNotFoundError(f"no safetensors weights in {src}{hint}")
    if out.resolve() == src.resolve():
        raise ValueError("export_to_llama: output directory must differ from the source")
    out.mkdir(parents=True, exist_ok=True)
    k2_to_llama_config(K2Config.from_pretrained(src)).save_pretrained(out)
    for path in weights + [src / name for name in COPIED_FILES if (src / name).is_file()]:
        shutil.copy2(path, out / path.name)
    return out


__all__ = ["export_to_llama", "k2_to_llama_config"]
