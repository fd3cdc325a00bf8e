"""``k2hf data prepare``: documents -> tokens -> fixed-length rows -> N evenly mixed, shuffled chunks.

This module sets a preparation up (tokenizer, one tokenize job per source, a fingerprint of the whole run) and
hands it to an executor; the work itself is the four-stage pipeline of :mod:`.pipeline`, executed by datatrove
(:mod:`.executors`): on this machine (default), on Slurm, or on Ray. Same recipe and seed, same bytes, whatever
the executor and the number of tasks or workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from k2hf.formats.prepared_data import FORMAT_VERSION, MANIFEST, Manifest, is_url, publish, sha256_file, token_dtype
from k2hf.recipes import recipe_path
from k2hf.tokenizer import save_tokenizer, sentencepiece_model_of

from .config import DataConfig, resolve_files
from .executors import (
    EXECUTORS,
    ExecutorError,
    SlurmSettings,
    run_local,
    run_ray,
    slurm_dry_run,
    slurm_executors,
    slurm_settings,
)
from .pipeline import PrepareRun
from .shards import BLOCK_RECORDS, SHARD_FORMAT, ShardJob

logger = logging.getLogger(__name__)


def load_tokenizer(spec: str, base_dir: str, work_dir: Path):
    """``sample`` (the tiny demo tokenizer), a dir with tokenizer.json, a LLaMA tokenizer.model / its dir, or a
    Hub repo id with a tokenizer (``LLM360/K2``)."""
    from transformers import AutoTokenizer

    from k2hf.tokenizer import build_k2_tokenizer

    if spec == "sample":
        from k2hf.tiny import build_tiny_tokenizer

        return build_tiny_tokenizer(work_dir / "sample-tokenizer")
    path = Path(recipe_path(spec, base_dir))
    if (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path)
    if not path.exists() and spec.count("/") == 1 and not spec.startswith((".", "~")):
        return AutoTokenizer.from_pretrained(spec)  # a Hub repo id, e.g. LLM360/K2
    return build_k2_tokenizer(path)


def prepare(config: DataConfig, out: str | os.PathLike, keep_work: bool = False, progress: bool = True, *,
            executor: str = "local", tasks: int | None = None, workers: int | None = None,
            slurm: SlurmSettings | None = None, ray_address: str | None = None, dry_run: bool = False,
            work_dir: str | os.PathLike | None = None) -> Manifest | None:
    """Prepare ``config`` into ``out``; returns the manifest (``None`` where the work was only submitted: Slurm).

    ``out`` is a local path or an fsspec URL (``s3://bucket/k2-data``): files are written under the work dir
    first and moved there as each task finishes, the manifest last. The work dir (tokenized shards, plan,
    executor records) is ``out/.work`` for a local ``out``, else ``work_dir`` (default ``./.k2hf-work/<hash of
    out>``); every task must be able to read and memory-map it. ``tasks`` caps the tasks per stage (default: one
    per source file and one per chunk); ``workers`` is how many run at once (default: the recipe's
    ``num_workers``). ``dry_run`` (Slurm) writes the sbatch scripts under the work dir and submits nothing."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
    workers = workers or config.num_workers
    if dry_run and executor != "slurm":
        raise ExecutorError("--dry-run is for the slurm executor (it writes the sbatch scripts without submitting)")
    if tasks is not None and tasks < 1 or workers < 1:
        raise ExecutorError(f"tasks and workers must be >= 1 (got tasks={tasks}, workers={workers})")
    run = plan_run(config, str(out), work_dir)
    if executor == "local":
        run_local(run, tasks, workers, progress)
    elif executor == "ray":
        run_ray(run, tasks, workers, ray_address, progress)
    else:
        executors = slurm_executors(run, tasks, workers, slurm or slurm_settings(config.slurm))
        if dry_run:
            for stage, script in slurm_dry_run(executors):
                path = Path(run.run_dir) / "slurm" / f"{stage}.slurm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(script)
                logger.info("would submit %s", path)
            return None
        executors[-1].run()  # submits every stage, each depending on the one before
        return None
    if is_url(out):
        import fsspec

        with fsspec.open(f"{str(out).rstrip('/')}/{MANIFEST}", "rt") as f:
            manifest = Manifest.from_dict(json.load(f))
    else:
        manifest = Manifest.read(out)
    if not keep_work:
        remove_work(Path(run.run_dir).parent)
    return manifest


WORK_ENTRIES = ("shards", "sample-tokenizer", "out")  # besides run-<fingerprint> dirs: what a preparation writes


def remove_work(work: Path) -> None:
    """Delete what a preparation wrote in its work dir, and the dir if that leaves it empty (a ``--work-dir`` the
    user gave may hold other things: they stay)."""
    for entry in work.iterdir():
        if entry.name in WORK_ENTRIES or entry.name.startswith("run-"):
            shutil.rmtree(entry)
    if not any(work.iterdir()):
        work.rmdir()


def work_dir_for(out: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> Path:
    """The work dir of a preparation into ``out`` (see :func:`prepare`)."""
    if work_dir is not None:
        return Path(work_dir)
    if not is_url(out):
        return Path(out) / ".work"
    return Path(".k2hf-work") / hashlib.sha256(str(out).encode()).hexdigest()[:12]


def plan_run(config: DataConfig, out: str, work_dir: str | os.PathLike | None = None) -> PrepareRun:
    """Tokenizer saved into ``out``, one job per source, and the run's fingerprinted work dir."""
    work = work_dir_for(out, work_dir)
    work.mkdir(parents=True, exist_ok=True)
    stage = work / "out" if is_url(out) else Path(out)
    tokenizer = load_tokenizer(config.tokenizer, config.base_dir, work)
    save_tokenizer(tokenizer, stage / "tokenizer")
    tokenizer_hash = sha256_file(stage / "tokenizer" / "tokenizer.json")
    for path in sorted((stage / "tokenizer").iterdir()):
        publish(stage, out, f"tokenizer/{path.name}")
    sources = {s.name: (resolve_files(s, config.base_dir) if s.hub is None else [f"hub:{s.hub['path']}"])
               for s in config.subsets}
    jobs = _shard_jobs(config, sources, tokenizer, tokenizer_hash, work)
    inputs = [config.data_dict(), tokenizer_hash, FORMAT_VERSION, [j.fingerprint for j in jobs]]
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return PrepareRun(config=config, jobs=jobs, out=out, stage=str(stage), run_dir=str(work / f"run-{fingerprint}"),
                      dtype=token_dtype(len(tokenizer)).name,
                      tokenizer={"sha256": tokenizer_hash, "vocab": len(tokenizer), "path": "tokenizer"})


def _shard_jobs(config: DataConfig, sources: dict, tokenizer, tokenizer_hash: str, work: Path) -> list[ShardJob]:
    fim_ids = tuple(tokenizer.convert_tokens_to_ids(["<fim_prefix>", "<fim_middle>", "<fim_suffix>"]))
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    sp_model = sentencepiece_model_of(tokenizer)
    jobs = []
    for s_index, subset in enumerate(config.subsets):
        for f_index, source in enumerate(sources[subset.name]):
            stat = _stat_or_none(source)
            fingerprint = hashlib.sha256(json.dumps([
                subset.__dict__, source, stat, tokenizer_hash, config.seed,
                config.fim.__dict__, config.on_error, BLOCK_RECORDS, SHARD_FORMAT, FORMAT_VERSION, config.tokenization,
            ], sort_keys=True, default=str).encode()).hexdigest()
            jobs.append(ShardJob(
                subset=subset, subset_index=s_index, source_index=f_index, source=source,
                out_dir=str(work / "shards" / f"{s_index:03d}-{f_index:06d}"), tokenizer_json=tokenizer_json,
                sp_model=str(sp_model) if sp_model else None,
                eos_id=tokenizer.eos_token_id, fim_ids=fim_ids, fim_rate=config.fim.rate,
                spm_rate=config.fim.spm_rate, seed=config.seed, fail_on_error=config.on_error == "fail",
                fingerprint=fingerprint, tokenization=config.tokenization,
            ))
    return jobs


def _stat_or_none(source: str) -> list | None:
    """File identity (size, modification time) for the shard fingerprint; None for Hub sources and unreadable files
    (reported later)."""
    if source.startswith("hub:"):
        return None
    try:
        if is_url(source):
            import fsspec

            fs, path = fsspec.core.url_to_fs(source)
            info = fs.info(path)
            return [info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")]
        stat = os.stat(source)
        return [stat.st_size, stat.st_mtime_ns]
    except (OSError, ValueError):
        return None
