"""SFT recipe (YAML): base model, source mixture, packing, and the TRL training arguments.

``train`` is passed to TRL's ``SFTConfig`` as is (TRL validates it); ``lora`` switches on PEFT LoRA/QLoRA.
Defaults are the K2-Chat recipe: ~1M OpenHermes-2.5, 3M FLAN, 300K other QA and ~2.7K safety conversations,
packed into 8192-token rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from k2hf.errors import UserError
from k2hf.recipes import PACKAGE_PREFIX, build_section, check_field_types, load_yaml_recipe, recipe_path

from .sources import ADAPTERS


class RecipeError(UserError):
    """An SFT recipe that cannot run, found before any work."""


@dataclass
class SourceSpec:
    name: str
    kind: str  # a key of finetune.sources.ADAPTERS (openhermes, flan, glaive_function_calling, ...)
    paths: list[str] = field(default_factory=list)
    hub: dict[str, Any] | None = None
    target: int | None = None  # conversations to draw (up- or down-sampled)
    weight: float | None = None  # alternatively a share of `total`
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, e.g. response_column


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    quantize: Literal["4bit", "8bit"] | None = None  # QLoRA (bitsandbytes, GPU only)


@dataclass
class SFTRecipe:
    model: str
    output_dir: str
    sources: list[SourceSpec]
    tokenizer: str | None = None
    layout: str | None = None  # k2_chat_060124 | k2_chat: the token layout trained (None: the base's own)
    packed_dir: str | None = None
    max_length: int = 8192
    overlong: Literal["split_turns", "truncate", "drop"] = "split_turns"
    strict: bool = False
    seed: int = 42
    total: int | None = None
    num_proc: int = 2
    train: dict[str, Any] = field(default_factory=dict)
    lora: LoraSpec | None = None
    base_dir: str = "."

    def resolve(self, path: str | None) -> str | None:
        if path is None or not (path.startswith(PACKAGE_PREFIX) or _looks_local(path, self.base_dir)):
            return path  # a Hub repo id
        return recipe_path(path, self.base_dir)

    @property
    def packed_path(self) -> Path:
        return Path(self.resolve(self.packed_dir) or Path(self.resolve(self.output_dir)) / "packed")

    def data_fingerprint(self) -> str:
        """Everything the packed data depends on (not the training arguments)."""
        not_data = ("train", "lora", "output_dir", "packed_dir", "num_proc")
        data = {k: v for k, v in asdict(self).items() if k not in not_data}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _looks_local(path: str, base_dir: str) -> bool:
    return path.startswith((".", "/")) or os.path.exists(os.path.join(base_dir, path))


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SFTRecipe:
    """Read a YAML recipe; ``overrides`` use dotted keys (``train.max_steps``) and win over the file."""
    return recipe_from_dict(load_yaml_recipe(path, overrides, RecipeError, "SFT recipe"))


def recipe_from_dict(raw: dict[str, Any]) -> SFTRecipe:
    raw = dict(raw)
    unknown = set(raw) - set(SFTRecipe.__dataclass_fields__)
    if unknown:
        raise RecipeError(f"unknown SFT recipe keys {sorted(unknown)}; known: {sorted(SFTRecipe.__dataclass_fields__)}")
    for required in ("model", "output_dir", "sources"):
        if not raw.get(required):
            raise RecipeError(f"SFT recipe needs `{required}`")
    sources = [build_section(SourceSpec, e, RecipeError, f"source {e.get('name')!r}") for e in raw.pop("sources")]
    lora = raw.pop("lora", None)
    lora = build_section(LoraSpec, lora, RecipeError, "lora") if lora else None
    recipe = SFTRecipe(sources=sources, lora=lora, **raw)
    check_field_types(recipe, RecipeError)
    _validate(recipe)
    return recipe


def _validate(recipe: SFTRecipe) -> None:
    from k2hf.token_layouts import LAYOUTS

    if recipe.layout is not None and not (recipe.layout in LAYOUTS and LAYOUTS[recipe.layout].has_chat):
        chat = [name for name, layout in LAYOUTS.items() if layout.has_chat]
        raise RecipeError(f"layout must be one of {chat} (got {recipe.layout!r})")
    if recipe.layout is not None and not LAYOUTS[recipe.layout].has_tools:
        tool_sources = [s.name for s in recipe.sources if s.kind == "glaive_function_calling"]
        if tool_sources:
            raise RecipeError(f"sources {tool_sources} are function calling, which layout {recipe.layout!r} has no "
                              "tool tokens for: use layout k2_chat")
    if recipe.max_length < 16:
        raise RecipeError(f"max_length must be >= 16 (got {recipe.max_length})")
    names = [s.name for s in recipe.sources]
    if len(set(names)) != len(names):
        raise RecipeError(f"source names must be unique (got {names})")
    for s in recipe.sources:
        if s.kind not in ADAPTERS:
            raise RecipeError(f"source {s.name!r}: kind must be one of {sorted(ADAPTERS)} (got {s.kind!r})")
        if bool(s.paths) == bool(s.hub):
            raise RecipeError(f"source {s.name!r}: give exactly one of `paths` or `hub`")
        if s.target is not None and s.weight is not None:
            raise RecipeError(f"source {s.name!r}: give `target` or `weight`, not both")
        if s.target is not None and s.target < 0 or s.weight is not None and s.weight < 0:
            raise RecipeError(f"source {s.name!r}: target/weight must be >= 0")
        if s.weight is not None and not recipe.total:
            raise RecipeError(f"source {s.name!r} has a weight: set the recipe's `total` (conversations in all)")
