"""One recipe system for every recipe k2hf reads (data, pretraining, SFT) and every section of one.

A recipe is a tree of :class:`Section` dataclasses (lists of sections too). :meth:`Recipe.load` reads YAML, applies
``--set KEY=VALUE`` overrides (dotted: ``optim.lr=3e-4``) and builds the tree with :meth:`Section.from_dict`,
which names unknown and missing keys with their path; every section checks its field types and validates itself
when it is built (:meth:`Section.validate`), from a file, from the CLI or from code, and every problem is one
:class:`RecipeError`. Paths in a recipe are relative to its file (:meth:`Recipe.resolve`); ``k2hf:REL`` names a
file shipped inside the installed k2hf. A section's fields can become CLI flags (:func:`add_section_flags`), with
their help text from field metadata (``field(metadata={"help": ...})``, as TRL's ``SFTConfig``), so each default
is stated once, on its field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import yaml

from .errors import UserError

PACKAGE_PREFIX = "k2hf:"  # `k2hf:sample_data/sft/flan.jsonl`: a file shipped inside the installed k2hf

S = TypeVar("S", bound="Section")


class RecipeError(UserError):
    """A recipe, or a section of one, that cannot run: found before any work, naming the key to change."""


class FieldTypeError(RecipeError):
    """A field holding a value of the wrong type (the message names the field; its section adds its own name)."""


def recipe_path(path: str, base_dir: str) -> str:
    """A local path as a recipe gives it: absolute as is, an fsspec URL as is; ``k2hf:REL`` a file shipped inside
    the installed k2hf (what the bundled recipes use, so that they work from a wheel as from a checkout); anything
    else relative to the recipe's folder (``base_dir``)."""
    if path.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parent / path[len(PACKAGE_PREFIX):])
    if os.path.isabs(path) or "://" in path:
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "max_steps=10"]`` -> ``{"optim.lr": 0.0003, "max_steps": 10}`` (values parsed as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=3e-4)")
        overrides[key] = yaml.safe_load(value)
    return overrides


def read_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The YAML mapping at ``path``; a missing file or bad YAML is one line naming file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise RecipeError(f"{what} {path} is not valid YAML ({reason} at{where})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{what} {path} must be a YAML mapping")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted ``overrides`` (``optim.lr``) set into the nested mapping ``raw`` (in place; returned)."""
    for key, value in (overrides or {}).items():
        target = raw
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise RecipeError(f"override {key}: `{parent}` is not a section")
        target[leaf] = value
    return raw


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Section:
    """The base of every recipe section (a dataclass subclass): typed fields, validated when built.

    Subclasses override :meth:`validate` for rules beyond the types, raising :class:`RecipeError` with the field's
    dotted name; ``LABEL`` (``optim``) names the section in messages about its fields."""

    LABEL: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_field_types(self)
        self.validate()

    def validate(self) -> None:
        """Rules beyond the field types; raise :class:`RecipeError`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def label(cls, raw: dict[str, Any], path: str) -> str:
        """How messages name this section at ``path`` (``optim``; a list entry by its ``name``)."""
        return f"`{path}`" if path else ""

    @classmethod
    def from_dict(cls: type[S], raw: Any, path: str = "", what: str | None = None) -> S:
        """Build from plain data (parsed YAML): nested sections and lists of them converted, unknown and missing
        keys named with their path (``optim.lr``, ``subsets[1]``), then the section checks itself."""
        what = what or getattr(cls, "WHAT", "recipe")
        if not isinstance(raw, dict):
            raise RecipeError(f"`{path or what}` must be a mapping (got {raw!r})")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(raw) - set(fields))
        label = cls.label(raw, path)
        if unknown:
            where = f"in {label}" if label else f"{what}"
            raise RecipeError(f"unknown keys {where}: {unknown}; known: {sorted(fields)}" if label else
                              f"unknown {what} keys {unknown}; known: {sorted(fields)}")
        values = {}
        for name, f in fields.items():
            if name in raw:
                values[name] = _convert(hints[name], raw[name], _join(path, name), what)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{what} needs `{_join(path, name)}`")
        try:
            return cls(**values)
        except FieldTypeError as error:
            if not label:
                raise
            raise FieldTypeError(f"{label}: {error}") from None


def _section_type(tp: Any) -> type[Section] | None:
    return tp if isinstance(tp, type) and issubclass(tp, Section) else None


def _convert(tp: Any, value: Any, path: str, what: str) -> Any:
    """Plain data -> the field's type where that is a section, an optional section or a list of sections."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if (section := _section_type(tp)) is not None:
        return section.from_dict(value if value is not None else {}, path, what)
    if origin in (Union, types.UnionType):
        sections = [a for a in args if _section_type(a)]
        if sections and value is not None:
            return sections[0].from_dict(value, path, what)
        return value
    if origin is list and args and _section_type(args[0]) and isinstance(value, list):
        return [args[0].from_dict(v, f"{path}[{i}]", what) for i, v in enumerate(value)]
    return value


class Recipe(Section):
    """A whole recipe, read from a YAML file: paths in it are relative to the file's folder (``base_dir``)."""

    WHAT: ClassVar[str] = "recipe"  # "pretraining config", "SFT recipe": how messages name it

    @classmethod
    def load(cls: type[S], path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> S:
        """Read the YAML at ``path``; ``overrides`` (dotted keys, ``optim.lr``) win over the file."""
        raw = read_yaml(path, cls.WHAT)
        raw.setdefault("base_dir", str(Path(path).parent))
        return cls.from_dict(apply_overrides(raw, overrides))

    def resolve(self, path: str | None) -> str | None:
        """A local path from the recipe (data dirs, output dirs, files): see :func:`recipe_path`."""
        return None if path is None else recipe_path(path, self.base_dir)

    def resolve_model(self, reference: str | None) -> str | None:
        """A model or tokenizer: a Hub repo id (``LLM360/K2``) stays one unless a local path of that name exists
        beside the recipe; anything that looks like a path is :meth:`resolve`'d."""
        if reference is None:
            return None
        local = reference.startswith((".", "/", "~", PACKAGE_PREFIX)) or reference.count("/") > 1 or \
            os.path.exists(os.path.join(self.base_dir, reference))
        return self.resolve(reference) if local else reference


# ---------------------------------------------------------------------------------------------- field types
def check_field_types(obj: Any) -> None:
    """Every field of the dataclass ``obj`` holds a value of its annotated type (``Literal`` choices included),
    so a wrong value stops where it enters, naming the field. Numbers given as strings (``1e-4``, which YAML reads
    as a string) are converted for ``float`` fields."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, expected = getattr(obj, f.name), hints[f.name]
        if _is_float(expected) and isinstance(value, str):
            try:
                value = float(value)
                object.__setattr__(obj, f.name, value)
            except ValueError:
                pass
        if not _matches(value, expected):
            raise FieldTypeError(f"`{f.name}` must be {_describe(expected)} (got {value!r})")


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
    if isinstance(tp, type) and issubclass(tp, Section):
        return "a mapping"
    return names.get(origin or tp, getattr(tp, "__name__", str(tp)))


# ---------------------------------------------------------------------------------------------- CLI flags
def add_section_flags(parser: argparse.ArgumentParser, section: type[Section], names: list[str] | None = None,
                      default_note: str = "default: {default}") -> None:
    """One ``--flag`` per field of ``section`` (``names`` to pick some), typed from the field, its help from the
    field's metadata and its default from the field itself: flags default to None, so only what the user gives
    overrides the section's own default."""
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        note = default_note.format(default=_default_of(f))
        text = f"{f.metadata.get('help', '')} ({note})" if f.metadata.get("help") else note
        tp = hints[f.name]
        if tp is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
            continue
        base = next((a for a in (typing.get_args(tp) or (tp,)) if a in (int, float, str)), str)
        parser.add_argument(flag, type=base, default=None, help=text)


def section_flags(args: argparse.Namespace, section: type[Section], names: list[str] | None = None
                  ) -> dict[str, Any]:
    """The ``section`` fields (of ``names``) the user gave as flags, for ``section(**...)``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(section)
            if (names is None or f.name in names) and getattr(args, f.name, None) is not None}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"
