"""Convert K2 checkpoints to plain LLaMA checkpoints (for vLLM, llama.cpp and other LLaMA-only tools).

K2's parameter names are LLaMA's, so the weights are copied byte for byte and only the config changes: the
export scales to the 65B checkpoints without loading a single tensor.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import LlamaConfig

from .checkpoints import CheckpointError, check_model_dir
from .modeling import AUTO_CLASSES, K2Config
from .modeling.configuration_k2 import LLAMA_PREFIX
from .tokenizer import write_converter_fields

WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


# K2 training options that LLaMA has no field for (they do not change the network).
K2_ONLY_FIELDS = ("chunked_loss", "loss_chunk_size")


def k2_to_llama_config(config: K2Config) -> LlamaConfig:
    """The ``LlamaConfig`` that describes the same network as ``config`` (each ``K2For...`` head becomes
    ``LlamaFor...``, whose parameter names are the same)."""
    fields = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", *K2_ONLY_FIELDS):
        fields.pop(key, None)
    llama = LlamaConfig(**fields)
    llama.architectures = [LLAMA_PREFIX + name.removeprefix("K2") for name in architectures(config)]
    return llama


def architectures(config: K2Config) -> list[str]:
    """The K2 model classes ``config`` is for (``K2ForCausalLM`` when it names none)."""
    return list(config.architectures or ["K2ForCausalLM"])


def model_class(config: K2Config) -> type:
    """The K2 class of ``config``'s first architecture; one line of error for a class K2 does not have."""
    classes = {cls.__name__: cls for cls in AUTO_CLASSES.values()}
    name = architectures(config)[0]
    if name not in classes:
        raise CheckpointError(f"config.json names architecture {name!r}; K2 has {sorted(classes)}")
    return classes[name]


def export_to_llama(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a ``model_type: llama`` copy of the K2 checkpoint in ``src`` to ``out`` (safetensors only).

    Before anything is written the source must load: a readable config, and safetensors files whose headers
    cover the whole file and hold every parameter of that config with its shape (checked without reading a
    tensor). The copies are checked the same way afterwards."""
    check_model_dir(src, tokenizer=False)
    src, out = Path(src), Path(out)
    weights = sorted(p for p in src.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    if not any(p.name.endswith(".safetensors") for p in weights):
        bins = [p.name for p in src.glob("*.bin")]
        hint = f" (found {bins}: re-save with safe_serialization)" if bins else ""
        raise CheckpointError(f"no safetensors weights in {src}{hint}")
    if out.resolve() == src.resolve():
        raise CheckpointError("the export's output directory must differ from the source")
    config = K2Config.from_pretrained(src)
    check_weights(src, config)
    out.mkdir(parents=True, exist_ok=True)
    k2_to_llama_config(config).save_pretrained(out)
    for path in weights + [src / name for name in COPIED_FILES if (src / name).is_file()]:
        shutil.copy2(path, out / path.name)
    write_converter_fields(out)  # added tokens + add_bos_token where converters (llama.cpp) look for them
    check_weights(out, config)
    return out


def check_weights(folder: Path, config: K2Config) -> None:
    """Every safetensors file in ``folder`` is whole, and together they hold exactly the parameters (names and
    shapes) of a model with ``config``; raises :class:`CheckpointError` naming what is wrong."""
    import torch
    from safetensors import SafetensorError, safe_open

    found: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt") as f:
                found.update({key: list(f.get_slice(key).get_shape()) for key in f.keys()})  # noqa: SIM118 (not a dict)
        except SafetensorError as error:
            raise CheckpointError(f"{path} is damaged or truncated ({error})") from None
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in model_class(config)(config).state_dict().items()}
    missing = sorted(expected.keys() - found.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or wrong:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" wrong shapes {wrong[:3]}" if wrong else "")
        raise CheckpointError(f"the weights in {folder} do not match its config.json: {detail.strip()}")


__all__ = ["check_weights", "export_to_llama", "k2_to_llama_config"]
