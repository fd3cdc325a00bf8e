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
from typing import Any, ClassVar, Literal

from k2hf.recipes import Recipe, RecipeError, Section

from .sources import ADAPTERS


@dataclass
class SourceSpec(Section):
    name: str
    kind: str  # a key of finetune.sources.ADAPTERS (openhermes, flan, glaive_function_calling, ...)
    paths: list[str] = field(default_factory=list)
    hub: dict[str, Any] | None = None
    target: int | None = None  # conversations to draw (up- or down-sampled)
    weight: float | None = None  # alternatively a share of `total`
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, e.g. response_column

    @classmethod
    def label(cls, raw: dict[str, Any], path: str) -> str:
        return f"source {raw.get('name')!r}"

    def validate(self) -> None:
        where = f"source {self.name!r}"
        if self.kind not in ADAPTERS:
            raise RecipeError(f"{where}: kind must be one of {sorted(ADAPTERS)} (got {self.kind!r})")
        if bool(self.paths) == bool(self.hub):
            raise RecipeError(f"{where}: give exactly one of `paths` or `hub`")
        if self.target is not None and self.weight is not None:
            raise RecipeError(f"{where}: give `target` or `weight`, not both")
        if self.target is not None and self.target < 0 or self.weight is not None and self.weight < 0:
            raise RecipeError(f"{where}: target/weight must be >= 0")


@dataclass
class LoraSpec(Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    quantize: Literal["4bit", "8bit"] | None = None  # QLoRA (bitsandbytes, GPU only)


@dataclass
class SFTRecipe(Recipe):
    WHAT: ClassVar[str] = "SFT recipe"

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

    @property
    def packed_path(self) -> Path:
        return Path(self.resolve(self.packed_dir) or Path(self.resolve(self.output_dir)) / "packed")

    def data_fingerprint(self) -> str:
        """Everything the packed data depends on (not the training arguments)."""
        not_data = ("train", "lora", "output_dir", "packed_dir", "num_proc")
        data = {k: v for k, v in asdict(self).items() if k not in not_data}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def validate(self) -> None:
        from k2hf.token_layouts import LAYOUTS

        for required in ("model", "output_dir", "sources"):
            if not getattr(self, required):
                raise RecipeError(f"SFT recipe needs `{required}`")
        if self.layout is not None and not (self.layout in LAYOUTS and LAYOUTS[self.layout].has_chat):
            chat = [name for name, layout in LAYOUTS.items() if layout.has_chat]
            raise RecipeError(f"layout must be one of {chat} (got {self.layout!r})")
        if self.layout is not None and not LAYOUTS[self.layout].has_tools:
            tool_sources = [s.name for s in self.sources if s.kind == "glaive_function_calling"]
            if tool_sources:
                raise RecipeError(f"sources {tool_sources} are function calling, which layout {self.layout!r} has "
                                  "no tool tokens for: use layout k2_chat")
        if self.max_length < 16:
            raise RecipeError(f"max_length must be >= 16 (got {self.max_length})")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise RecipeError(f"source names must be unique (got {names})")
        for s in self.sources:
            if s.weight is not None and not self.total:
                raise RecipeError(f"source {s.name!r} has a weight: set the recipe's `total` (conversations in all)")


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SFTRecipe:
    """Read a YAML recipe; ``overrides`` use dotted keys (``train.max_steps``) and win over the file."""
    return SFTRecipe.load(path, overrides)


