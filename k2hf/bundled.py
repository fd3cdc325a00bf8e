"""The recipes k2hf ships: data recipes, pretraining recipes, accelerate configs and SFT recipes, found inside the
installed package (a wheel) or the checkout alike, listed and copied out to start from (as alignment-handbook and
axolotl hand out theirs).

```
k2hf recipes list                       # name, kind, first comment line
k2hf recipes copy pretrain/tiny_stage1 my-recipes/   # a copy to edit
accelerate launch --config_file "$(k2hf recipes path accelerate/zero3)" ...
```

The files live beside the code that reads them (``pretrain/configs``, ``pretrain/accelerate``,
``finetune/recipes``), shipped as package data; this module only looks them up by package name (``find_spec``
imports no training code).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# name prefix -> (package, folder inside it, what the recipes there are for, their file suffix)
KINDS = {
    "data": ("k2hf.pretrain", "configs/data", "data recipe (k2hf data prepare --config)", ".yaml"),
    "pretrain": ("k2hf.pretrain", "configs", "pretraining recipe (k2hf pretrain --config)", ".yaml"),
    "accelerate": ("k2hf.pretrain", "accelerate", "accelerate config (accelerate launch --config_file)", ".yaml"),
    "sft": ("k2hf.finetune", "recipes", "SFT recipe (k2hf sft --recipe)", ".yaml"),
    "slurm": ("k2hf.pretrain", "slurm", "Slurm job script (sbatch)", ".sbatch"),
}
SUFFIXES = (".yaml", ".yml", ".sbatch")


@dataclass(frozen=True)
class BundledRecipe:
    name: str  # e.g. "pretrain/tiny_stage1"
    kind: str
    path: Path

    @property
    def summary(self) -> str:
        """The recipe's first comment line (past a script's ``#!``)."""
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#") and not line.startswith("#!"):
                return line.lstrip("# ").strip()
        return ""


def _folder(package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{package} is not installed: reinstall k2hf")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def list_recipes() -> list[BundledRecipe]:
    """Every bundled recipe, by kind then name."""
    found = []
    for kind, (package, sub, _, suffix) in KINDS.items():
        folder = _folder(package, sub)
        found += [BundledRecipe(f"{kind}/{p.stem}", kind, p) for p in sorted(folder.glob(f"*{suffix}"))]
    return found


def find_recipe(name: str) -> BundledRecipe:
    """A bundled recipe by name (``pretrain/tiny_stage1``; its suffix may be given)."""
    name = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
    recipes = list_recipes()
    for recipe in recipes:
        if recipe.name == name:
            return recipe
    matches = [r for r in recipes if r.name.split("/", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    raise UserError(f"no bundled recipe {name!r}: `k2hf recipes list` shows them "
                    f"({', '.join(r.name for r in recipes[:4])}, ...)")


def copy_recipe(name: str, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """Copy a bundled recipe into ``dest`` (a folder, created if needed, or a file path ending in ``.yaml`` or,
    for a Slurm script, ``.sbatch``)."""
    recipe = find_recipe(name)
    dest = Path(dest)
    if dest.is_file() and dest.suffix not in SUFFIXES:
        raise UserError(f"{dest} is a file: give a folder, or a path ending in {recipe.path.suffix}")
    target = dest if dest.suffix in SUFFIXES else dest / recipe.path.name
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists: remove it or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.path, target)
    return target


__all__ = ["KINDS", "BundledRecipe", "copy_recipe", "find_recipe", "list_recipes"]
