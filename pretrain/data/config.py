"""Data-mixture recipe: named subsets (files, globs or a Hub dataset), repeat factors, FIM, chunking.

Everything is validated before any work starts; errors say which field to change.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from k2hf.formats.prepared_data import is_url
from k2hf.recipes import Recipe, RecipeError, Section, recipe_path
from k2hf.records import EXTENSION_FORMATS
from k2hf.release import ORDER_PRESETS, order_preset

DataFormat = Literal["jsonl", "parquet", "text", "hub"]
FORMATS = get_args(DataFormat)
_EXTENSION_FORMATS = {k: v for k, v in EXTENSION_FORMATS.items() if v in FORMATS}


EXECUTION_KEYS = ("num_workers", "slurm")


@dataclass
class FimConfig(Section):
    """Fill-in-the-middle for code (K2: rate 0.5, half of those in SPM order), as in StarCoder."""

    rate: float = 0.5
    spm_rate: float = 0.5

    def validate(self) -> None:
        for name, value in (("fim.rate", self.rate), ("fim.spm_rate", self.spm_rate)):
            if not 0.0 <= value <= 1.0:
                raise RecipeError(f"{name} must be in [0, 1] (got {value})")


@dataclass
class SubsetConfig(Section):
    """One named source of documents.

    Local data: ``paths`` (files or globs; ``.jsonl``/``.json``, ``.parquet``, ``.txt`` = one document per file).
    Hub data: ``hub: {path: ..., name: ..., split: train, data_files: ...}``, streamed through ``datasets``.
    ``repeat`` may be fractional: 3 repeats the subset three times, 0.5 keeps a deterministic half.
    """

    name: str
    paths: list[str] = field(default_factory=list)
    hub: dict[str, Any] | None = None
    text_field: str = "text"
    format: DataFormat | None = None
    repeat: float = 1.0
    fim: bool = False

    @classmethod
    def label(cls, raw: dict[str, Any], path: str) -> str:
        return f"subset {raw.get('name')!r}"

    def validate(self) -> None:
        where = f"subset {self.name!r}"
        if self.repeat < 0:
            raise RecipeError(f"{where}: repeat must be a number >= 0 (got {self.repeat!r})")
        if bool(self.paths) == bool(self.hub):
            raise RecipeError(f"{where}: give exactly one of `paths` (local files) or `hub` (a Hub dataset)")
        if self.hub is not None:
            if "path" not in self.hub:
                raise RecipeError(f"{where}: `hub` needs `path` (a dataset id such as allenai/c4)")
            self.format = "hub"


@dataclass
class DataConfig(Recipe):
    """The whole recipe. ``chunk_order`` is the training order of chunks: a list, a preset name (``k2``: K2's
    real order, 360 chunks), or by default 0..N-1 with ``defer`` moved last."""

    WHAT: ClassVar[str] = "data config"

    subsets: list[SubsetConfig]
    tokenizer: str
    seq_len: int = 2048
    num_chunks: int = 360
    seed: int = 1234
    fim: FimConfig = field(default_factory=FimConfig)
    chunk_order: list[int] | str | None = None
    defer: list[int] = field(default_factory=list)
    on_error: Literal["fail", "skip"] = "fail"
    # default: each document encoded whole + eos id; k2_release: how K2's released rows were made (k2_release.py)
    tokenization: Literal["default", "k2_release"] = "default"
    num_workers: int = 2
    # how `--executor slurm` submits (partition, time, cpus_per_task, job_name, env_command, ...); flags override
    slurm: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."

    def data_dict(self) -> dict[str, Any]:
        """The recipe without how it is run (workers, Slurm settings): what decides the output's bytes."""
        recipe = self.to_dict()
        for key in EXECUTION_KEYS:
            recipe.pop(key)
        return recipe

    def resolved_order(self) -> list[int]:
        """Chunk indices in training order."""
        if isinstance(self.chunk_order, str):
            return order_preset(self.chunk_order)
        if self.chunk_order is not None:
            return list(self.chunk_order)
        deferred = [c for c in self.defer]
        return [c for c in range(self.num_chunks) if c not in deferred] + deferred


    def validate(self) -> None:
        """Anything that would fail later fails here, before any work (the subsets' files are looked up too)."""
        if not self.subsets:
            raise RecipeError("data config needs at least one entry under `subsets`")
        if self.seq_len < 2:
            raise RecipeError(f"seq_len must be an integer >= 2 (got {self.seq_len!r})")
        if self.num_chunks < 1:
            raise RecipeError(f"num_chunks must be an integer >= 1 (got {self.num_chunks!r})")
        if self.tokenization == "k2_release" and any(s.fim for s in self.subsets):
            raise RecipeError("tokenization k2_release has no fill-in-the-middle (K2 chose FIM per row with a "
                              "wall-clock seed; its released rows are the record: import them with "
                              "`k2hf data import-k2`): set `fim: false`")
        if self.num_workers < 1:
            raise RecipeError(f"num_workers must be >= 1 (got {self.num_workers})")
        names = [s.name for s in self.subsets]
        if len(set(names)) != len(names):
            raise RecipeError(f"subset names must be unique (got {names})")
        for subset in self.subsets:
            if subset.hub is None:
                _check_files(subset, self.base_dir)
        if isinstance(self.chunk_order, str):
            if self.chunk_order not in ORDER_PRESETS:
                raise RecipeError(f"chunk_order {self.chunk_order!r} is not a preset; known: {sorted(ORDER_PRESETS)}"
                                  " (or give a list of chunk indices)")
            if self.defer:
                raise RecipeError("give either `defer` or a `chunk_order` preset, not both (the preset is the order)")
        order = self.resolved_order()
        if sorted(order) != list(range(self.num_chunks)):
            raise RecipeError(
                f"chunk_order/defer must list each of the {self.num_chunks} chunks exactly once (got {order[:10]}...)"
            )


def load_data_config(path: str | os.PathLike, **overrides: Any) -> DataConfig:
    """Read a YAML recipe (relative paths are relative to the YAML file); ``overrides`` (top-level keys, as the
    CLI's flags give them; None = not given) win over the file."""
    return DataConfig.load(path, {k: v for k, v in overrides.items() if v is not None})


def _check_files(subset: SubsetConfig, base_dir: str) -> None:
    for file in resolve_files(subset, base_dir):
        if (subset.format or _EXTENSION_FORMATS.get(Path(file).suffix)) is None:
            raise RecipeError(f"subset {subset.name!r}: cannot tell the format of {file}; set `format:` "
                              f"({FORMATS[:3]})")


def _resolve_url(subset: SubsetConfig, pattern: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    matched = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    matched = [m for m in matched if not fs.isdir(m)]
    if not matched:
        raise RecipeError(f"subset {subset.name!r}: {pattern!r} matches no file")
    return [fs.unstrip_protocol(m) for m in matched]


def resolve_files(subset: SubsetConfig, base_dir: str) -> list[str]:
    """The subset's files (local paths, or fsspec URLs such as ``s3://bucket/web/*.jsonl``), globs expanded and
    sorted; every pattern must match something."""
    files: list[str] = []
    for pattern in subset.paths:
        if is_url(pattern):
            files.extend(_resolve_url(subset, pattern))
            continue
        matched = sorted(glob.glob(recipe_path(pattern, base_dir), recursive=True))
        if not matched:
            raise RecipeError(f"subset {subset.name!r}: {pattern!r} matches no file (looked in {base_dir})")
        # directories are not documents; anything else (even a broken link) is read and reported if unreadable
        files.extend(os.path.normpath(m) for m in matched if not os.path.isdir(m))
    return files


def file_format(subset: SubsetConfig, path: str) -> str:
    """The reader to use for ``path`` in ``subset``."""
    return subset.format or _EXTENSION_FORMATS[Path(path).suffix]
