"""Reading YAML recipes with command-line overrides, shared by the data, pretraining and SFT recipes."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError

PACKAGE_PREFIX = "k2hf:"  # `k2hf:sample_data/sft/flan.jsonl`: a file shipped inside the installed k2hf


def recipe_path(path: str, base_dir: str) -> str:
    """A path as a recipe gives it: absolute as is; ``k2hf:REL`` a file shipped inside the installed k2hf package
    (what the bundled recipes use, so that they work from a wheel as from a checkout); anything else relative to
    the recipe's folder (``base_dir``)."""
    if path.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parent / path[len(PACKAGE_PREFIX):])
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "max_steps=10"]`` -> ``{"optim.lr": 0.0003, "max_steps": 10}`` (values parsed as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=3e-4)")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_yaml_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None, error: type[Exception],
                     what: str) -> dict[str, Any]:
    """The YAML mapping at ``path`` with ``base_dir`` (the file's folder, for relative paths) and dotted
    ``overrides`` (``optim.lr``) applied; a missing file raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise error(f"{what} {path} is not valid YAML ({reason} at{where})") from None
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
    section = cls(**entry)
    check_field_types(section, error, where)
    return section


def check_field_types(obj: Any, error: type[Exception], where: str = "") -> None:
    """Every field of the dataclass ``obj`` holds a value of its annotated type (``Literal`` choices included),
    so a wrong value stops the run where it enters, naming the field. Numbers given as strings (``1e-4``, which
    YAML reads as a string) are converted for ``float`` fields."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, expected = getattr(obj, f.name), hints[f.name]
        if _is_float(expected) and isinstance(value, str):
            try:
                value = float(value)
                setattr(obj, f.name, value)
            except ValueError:
                pass
        if not _matches(value, expected):
            prefix = f"{where}: " if where else ""
            raise error(f"{prefix}`{f.name}` must be {_describe(expected)} (got {value!r})")


def _is_float(tp: Any) -> bool:
    return tp is float or (typing.get_origin(tp) in (Union, types.UnionType) and float in typing.get_args(tp))


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, origin) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             dict: "a mapping"}
    return names.get(origin or tp, getattr(tp, "__name__", str(tp)))
