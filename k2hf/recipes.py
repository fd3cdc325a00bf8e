"""Reading YAML recipes with command-line overrides, shared by the data, pretraining and SFT recipes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "max_steps=10"]`` -> ``{"optim.lr": 0.0003, "max_steps": 10}`` (values parsed as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_yaml_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None, error: type[Exception],
                     what: str) -> dict[str, Any]:
    """The YAML mapping at ``path`` with ``base_dir`` (the file's folder, for relative paths) and dotted
    ``overrides`` (``optim.lr``) applied; a missing file raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise error(f"{what} {path} must be a YAML mapping")
    raw.setdefault("base_dir", str(path.parent))
    for key, value in (overrides or {}).items():
        target = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return raw


def build_section(cls: type, entry: dict[str, Any], error: type[Exception], where: str) -> Any:
    """``cls(**entry)`` for a recipe dataclass, naming unknown keys (and the known ones) instead of a TypeError."""
    known = set(cls.__dataclass_fields__)
    unknown = set(entry) - known
    if unknown:
        raise error(f"unknown keys in {where}: {sorted(unknown)}; known: {sorted(known)}")
    return cls(**entry)
