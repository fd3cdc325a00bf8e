"""Data-mixture recipe: named subsets (files, globs or a Hub dataset), repeat factors, FIM, chunking.

Everything is validated before any work starts; errors say which field to change.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from k2hf.errors import UserError
from k2hf.formats.prepared_data import is_url
from k2hf.recipes import build_section, check_field_types, load_yaml_recipe, recipe_path
from k2hf.records import EXTENSION_FORMATS
from k2hf.release import ORDER_PRESETS, order_preset

DataFormat = Literal["jsonl", "parquet", "text", "hub"]
FORMATS = get_args(DataFormat)
_EXTENSION_FORMATS = {k: v for k, v in EXTENSION_FORMATS.items() if v in FORMATS}


EXECUTION_KEYS = ("num_workers", "slurm")


class DataConfigError(UserError):
    """A data recipe that cannot be prepared, found before any work starts."""


@dataclass
class FimConfig:
    """Fill-in-the-middle for code (K2: rate 0.5, half of those in SPM order), as in StarCoder."""

    rate: float = 0.5
    spm_rate: float = 0.5


@dataclass
class SubsetConfig:
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


@dataclass
class DataConfig:
    """The whole recipe. ``chunk_order`` is the training order of chunks: a list, a preset name (``k2``: K2's
    real order, 360 chunks), or by default 0..N-1 with ``defer`` moved last."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


def load_data_config(path: str | os.PathLike, **overrides: Any) -> DataConfig:
    """Read a YAML recipe (relative paths are relative to the YAML file) and validate it."""
    raw = load_yaml_recipe(path, {k: v for k, v in overrides.items() if v is not None}, DataConfigError, "data config")
    return data_config_from_dict(raw)


def data_config_from_dict(raw: dict[str, Any]) -> DataConfig:
    """Build and validate a :class:`DataConfig` from plain data (e.g. parsed YAML)."""
    raw = dict(raw)
    known = set(DataConfig.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise DataConfigError(f"unknown data config keys {sorted(unknown)}; known keys: {sorted(known)}")
    if "subsets" not in raw or not raw["subsets"]:
        raise DataConfigError("data config needs at least one entry under `subsets`")
    if "tokenizer" not in raw:
        raise DataConfigError("data config needs `tokenizer`: a K2 tokenizer dir, or `sample` for the demo tokenizer")
    subsets = [build_section(SubsetConfig, e, DataConfigError, f"subset {e.get('name')!r}") for e in raw.pop("subsets")]
    fim = build_section(FimConfig, raw.pop("fim", None) or {}, DataConfigError, "fim")
    config = DataConfig(subsets=subsets, fim=fim, **raw)
    check_field_types(config, DataConfigError)
    validate(config)
    return config


def validate(config: DataConfig) -> None:
    """Raise :class:`DataConfigError` for anything that would fail later."""
    if not isinstance(config.seq_len, int) or config.seq_len < 2:
        raise DataConfigError(f"seq_len must be an integer >= 2 (got {config.seq_len!r})")
    if not isinstance(config.num_chunks, int) or config.num_chunks < 1:
        raise DataConfigError(f"num_chunks must be an integer >= 1 (got {config.num_chunks!r})")
    if config.tokenization == "k2_release" and any(s.fim for s in config.subsets):
        raise DataConfigError("tokenization k2_release has no fill-in-the-middle (K2 chose FIM per row with a "
                              "wall-clock seed; its released rows are the record: import them with "
                              "`k2hf data import-k2`): set `fim: false`")
    if config.num_workers < 1:
        raise DataConfigError(f"num_workers must be >= 1 (got {config.num_workers})")
    for name, value in (("fim.rate", config.fim.rate), ("fim.spm_rate", config.fim.spm_rate)):
        if not 0.0 <= value <= 1.0:
            raise DataConfigError(f"{name} must be in [0, 1] (got {value})")
    names = [s.name for s in config.subsets]
    if len(set(names)) != len(names):
        raise DataConfigError(f"subset names must be unique (got {names})")
    for subset in config.subsets:
        _validate_subset(subset, config.base_dir)
    if isinstance(config.chunk_order, str):
        if config.chunk_order not in ORDER_PRESETS:
            raise DataConfigError(f"chunk_order {config.chunk_order!r} is not a preset; known: {sorted(ORDER_PRESETS)}"
                                  " (or give a list of chunk indices)")
        if config.defer:
            raise DataConfigError("give either `defer` or a `chunk_order` preset, not both (the preset is the order)")
    order = config.resolved_order()
    if sorted(order) != list(range(config.num_chunks)):
        raise DataConfigError(
            f"chunk_order/defer must list each of the {config.num_chunks} chunks exactly once (got {order[:10]}...)"
        )


def _validate_subset(subset: SubsetConfig, base_dir: str) -> None:
    where = f"subset {subset.name!r}"
    if not isinstance(subset.repeat, (int, float)) or subset.repeat < 0:
        raise DataConfigError(f"{where}: repeat must be a number >= 0 (got {subset.repeat!r})")
    if bool(subset.paths) == bool(subset.hub):
        raise DataConfigError(f"{where}: give exactly one of `paths` (local files) or `hub` (a Hub dataset)")
    if subset.hub is not None:
        if "path" not in subset.hub:
            raise DataConfigError(f"{where}: `hub` needs `path` (a dataset id such as allenai/c4)")
        subset.format = "hub"
        return
    files = resolve_files(subset, base_dir)
    for file in files:
        file_format = subset.format or _EXTENSION_FORMATS.get(Path(file).suffix)
        if file_format is None:
            raise DataConfigError(f"{where}: cannot tell the format of {file}; set `format:` ({FORMATS[:3]})")


def _resolve_url(subset: SubsetConfig, pattern: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    matched = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    matched = [m for m in matched if not fs.isdir(m)]
    if not matched:
        raise DataConfigError(f"subset {subset.name!r}: {pattern!r} matches no file")
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
            raise DataConfigError(f"subset {subset.name!r}: {pattern!r} matches no file (looked in {base_dir})")
        # directories are not documents; anything else (even a broken link) is read and reported if unreadable
        files.extend(os.path.normpath(m) for m in matched if not os.path.isdir(m))
    return files


def file_format(subset: SubsetConfig, path: str) -> str:
    """The reader to use for ``path`` in ``subset``."""
    return subset.format or _EXTENSION_FORMATS[Path(path).suffix]
