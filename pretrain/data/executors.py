"""Run the preparation pipeline (:mod:`.pipeline`) with a datatrove executor: local, Slurm or Ray.

Every stage gets its own executor, chained with ``depends``; its logging dir (``.work/run-<fingerprint>/logs/
<stage>-t<tasks>``) holds datatrove's record of finished tasks, so a rerun skips them. The fingerprint covers the
recipe, the tokenizer and the sources, and the task count is in the name, so a changed recipe never reuses a stale
record.
"""

from __future__ import annotations

import multiprocessing
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from loguru import logger
from tqdm.auto import tqdm

from k2hf.errors import UserError

from .pipeline import STAGES, PrepareRun
from .shards import Shard, shard_is_done

EXECUTORS = ("local", "slurm", "ray")
# fork where there is one (Linux), as a process pool does: forkserver/spawn re-import the caller's __main__, which
# hangs a script that calls `prepare` without an `if __name__ == "__main__":` guard
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class ExecutorError(UserError):
    """An executor that cannot be used as asked (missing extra, missing Slurm settings)."""


@dataclass
class SlurmSettings:
    """What ``sbatch`` needs; ``env_command`` runs before each task (e.g. ``source .venv/bin/activate``)."""

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    job_name: str = "k2hf-data"
    env_command: str | None = None
    sbatch_args: dict = field(default_factory=dict)


def slurm_settings(raw: dict) -> SlurmSettings:
    """:class:`SlurmSettings` from the recipe's ``slurm:`` section (and flags), unknown keys refused."""
    known = set(SlurmSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ExecutorError(f"unknown slurm settings {unknown}; known: {sorted(known)}")
    return SlurmSettings(**raw)


def stage_tasks(run: PrepareRun, tasks: int | None) -> dict[str, int]:
    """Tasks per stage: one per source / chunk by default (the executor balances them), at most ``tasks``."""
    cap = tasks if tasks is not None else sys.maxsize
    return {"tokenize": max(1, min(cap, len(run.jobs))), "plan": 1,
            "write": max(1, min(cap, run.config.num_chunks)), "manifest": 1}


def _logging_dir(run: PrepareRun, stage: str, tasks: int) -> str:
    return str(Path(run.run_dir) / "logs" / f"{stage}-t{tasks}")


class _QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor with its per-task console logs off: k2hf's progress bars report the work and
    its errors reach the caller as exceptions (the CLI prints them as one line)."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        logger.disable("datatrove")  # worker processes start with loguru enabled
        return super()._run_for_rank(rank, local_rank, node_rank)


def run_local(run: PrepareRun, tasks: int | None, workers: int, progress: bool = True) -> None:
    """All four stages on this machine, one after the other, ``workers`` tasks at a time."""
    counts = stage_tasks(run, tasks)
    logger.disable("datatrove")
    # The worker pool is stopped with SIGTERM: forked workers must not inherit a handler that catches it (a Ray
    # driver's, a trainer's in the same process), or closing the pool waits on them forever.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None
    try:
        for stage, step in STAGES:
            executor = _QuietLocalExecutor(
                [step(run)], tasks=counts[stage], workers=min(workers, counts[stage]),
                logging_dir=_logging_dir(run, stage, counts[stage]), start_method=START_METHOD)
            with StageProgress(run, stage, enabled=progress):
                executor.run()
    finally:
        logger.enable("datatrove")
        if main:
            signal.signal(signal.SIGTERM, previous)


class StageProgress:
    """A progress bar for a stage run by tasks in other processes: it watches the files they finish (shards with
    their document and token counts; chunk results), so it shows docs/s and tokens/s whatever runs the tasks."""

    def __init__(self, run: PrepareRun, stage: str, enabled: bool = True, interval: float = 0.5) -> None:
        self.run, self.stage, self.interval = run, stage, interval
        self.enabled = enabled and stage in ("tokenize", "write")
        self._stop = threading.Event()

    def __enter__(self) -> StageProgress:
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def _watch(self) -> None:
        if self.stage == "tokenize":
            pending, unit, desc = list(self.run.jobs), "file", "tokenize"
        else:
            pending, unit, desc = list(range(self.run.config.num_chunks)), "chunk", "write chunks"
        bar = tqdm(total=len(pending), desc=desc, unit=unit)
        docs = tokens = 0
        start = time.perf_counter()
        while True:
            stopping = self._stop.is_set()  # one last look after the stage has ended
            finished = [item for item in pending if self._finished(item)]
            for item in finished:
                pending.remove(item)
                if self.stage == "tokenize":
                    meta = Shard(item.out_dir).meta
                    docs, tokens = docs + meta["records_read"], tokens + meta["tokens"]
            if finished:
                elapsed = max(time.perf_counter() - start, 1e-9)
                if self.stage == "tokenize":
                    bar.set_postfix(docs_s=f"{docs / elapsed:,.0f}", tok_s=f"{tokens / elapsed:,.0f}")
                bar.update(len(finished))
            if stopping or not pending:
                break
            self._stop.wait(self.interval)
        bar.close()

    def _finished(self, item) -> bool:
        return shard_is_done(item) if self.stage == "tokenize" else self.run.written_path(item).is_file()


def slurm_executors(run: PrepareRun, tasks: int | None, workers: int, settings: SlurmSettings) -> list:
    """One Slurm array job per stage, each depending on the one before."""
    if not settings.partition:
        raise ExecutorError("the slurm executor needs a partition: `--slurm-partition P` (or `slurm: {partition: P}` "
                            "in the recipe)")
    from datatrove.executor.slurm import SlurmPipelineExecutor

    counts = stage_tasks(run, tasks)
    executors, previous = [], None
    for stage, step in STAGES:
        previous = SlurmPipelineExecutor(
            [step(run)], tasks=counts[stage], workers=workers if counts[stage] > 1 else 1, time=settings.time,
            partition=settings.partition, cpus_per_task=settings.cpus_per_task,
            mem_per_cpu_gb=settings.mem_per_cpu_gb, job_name=f"{settings.job_name}-{stage}",
            env_command=settings.env_command, sbatch_args=dict(settings.sbatch_args),
            logging_dir=_logging_dir(run, stage, counts[stage]), depends=previous)
        executors.append(previous)
    return executors


def slurm_dry_run(executors: list) -> list[tuple[str, str]]:
    """The sbatch scripts the Slurm executors would submit, without submitting: (stage, script) pairs. The
    ``--dependency`` of each stage on the previous one is added by ``sbatch`` arguments at submission."""
    scripts = []
    for (stage, _), executor in zip(STAGES, executors):
        command = f"launch_pickled_pipeline {shlex.quote(executor.logging_dir.resolve_paths('executor.pik'))}"
        script = executor.get_launch_file_contents(executor.get_sbatch_args(executor.world_size), command)
        scripts.append((stage, script))
    return scripts


def run_ray(run: PrepareRun, tasks: int | None, workers: int, address: str | None, progress: bool = True) -> None:
    """All four stages on a Ray cluster (``address``), or on a local Ray started here."""
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as error:
        raise ExecutorError(f"the ray executor needs Ray: pip install 'k2hf[ray]' ({error})") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    counts = stage_tasks(run, tasks)
    for stage, step in STAGES:
        executor = RayPipelineExecutor([step(run)], tasks=counts[stage], workers=min(workers, counts[stage]),
                                       logging_dir=_logging_dir(run, stage, counts[stage]))
        with StageProgress(run, stage, enabled=progress):
            executor.run()
