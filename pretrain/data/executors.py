"""Run the preparation pipeline (:mod:`.pipeline`) with a datatrove executor: local, Slurm or Ray.

Every stage gets its own executor, chained with ``depends``; its logging dir (``.work/run-<fingerprint>/logs/
<stage>-t<tasks>``) holds datatrove's record of finished tasks, so a rerun skips them. The fingerprint covers the
recipe, the tokenizer and the sources, and the task count is in the name, so a changed recipe never reuses a stale
record.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dill
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
    """What ``sbatch`` needs; ``env_command`` runs before each task (e.g. ``source .venv/bin/activate``),
    ``gres`` the generic resources of each task (``gpu:2``, ``gpu:a100:2``), ``sbatch_args`` any other
    ``#SBATCH`` option (``{"account": "...", "qos": "..."}``)."""

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    job_name: str = "k2hf-data"
    env_command: str | None = None
    gres: str | None = None
    sbatch_args: dict = field(default_factory=dict)

    def all_sbatch_args(self) -> dict:
        return {**({"gres": self.gres} if self.gres else {}), **self.sbatch_args}


def slurm_settings(raw: dict) -> SlurmSettings:
    """:class:`SlurmSettings` from the recipe's ``slurm:`` section (and flags), unknown keys refused."""
    known = set(SlurmSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ExecutorError(f"unknown slurm settings {unknown}; known: {sorted(known)}")
    return SlurmSettings(**raw)


def read_slurm_config(path: str | os.PathLike) -> dict:
    """The Slurm settings of a YAML file: a mapping of :class:`SlurmSettings` keys, or a recipe holding one under
    ``slurm:`` (``--slurm-config``; flags given beside it win)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ExecutorError(f"{path} does not exist: give a YAML mapping of slurm settings (partition, time, gres, "
                            "cpus_per_task, env_command, sbatch_args, ...)")
    raw = yaml.safe_load(path.read_text()) or {}
    raw = raw.get("slurm", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        raise ExecutorError(f"{path}: expected a mapping of slurm settings")
    slurm_settings(raw)  # unknown keys stop here, naming the file's keys
    return raw


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

    gpus_per_task = 0

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        logger.disable("datatrove")  # worker processes start with loguru enabled
        if not self.gpus_per_task:
            return super()._run_for_rank(rank, local_rank, node_rank)
        # Worker slot `local_rank` owns GPUs [local_rank * g, (local_rank + 1) * g) of this machine, as Slurm's gres
        # and Ray's num_gpus give each task its own (datatrove's local executor does not). CUDA reads
        # CUDA_VISIBLE_DEVICES once per process and a pool process takes whichever slot is free for its next task,
        # so each task runs in a fresh process that sees only its slot's GPUs.
        first = local_rank * self.gpus_per_task
        visible = ",".join(str(first + i) for i in range(self.gpus_per_task))
        with tempfile.TemporaryDirectory(prefix="k2hf-task-") as tmp:
            # a subprocess, not a multiprocessing child: a pool's worker is a daemon, which may have none
            task, stats = Path(tmp) / "task.pik", Path(tmp) / "stats.pik"
            task.write_bytes(dill.dumps((self, rank, local_rank, node_rank)))
            # the child imports what the pickle names from where this process does, as a spawned child would
            path = os.pathsep.join(p for p in sys.path if p)
            done = subprocess.run([sys.executable, "-m", __name__, str(task), str(stats)],
                                  env={**os.environ, "CUDA_VISIBLE_DEVICES": visible, "PYTHONPATH": path})
            if done.returncode != 0 or not stats.is_file():
                raise ExecutorError(f"task {rank} (GPUs {visible}) exited with code {done.returncode}")
            return dill.loads(stats.read_bytes())


def _run_pickled_task(task: str, stats: str) -> None:
    """``python -m k2hf.pretrain.data.executors TASK STATS``: run one pickled task of a local executor here (in a
    process of its own, with the GPUs its environment names) and pickle its stats."""
    executor, rank, local_rank, node_rank = dill.loads(Path(task).read_bytes())
    executor.gpus_per_task = 0
    Path(stats).write_bytes(dill.dumps(executor._run_for_rank(rank, local_rank, node_rank)))


def run_local(run: PrepareRun, tasks: int | None, workers: int, progress: bool = True) -> None:
    """All four stages on this machine, one after the other, ``workers`` tasks at a time."""
    counts = stage_tasks(run, tasks)
    for stage, step in STAGES:
        with StageProgress(run, stage, enabled=progress):
            _run_local_step(step(run), counts[stage], workers, _logging_dir(run, stage, counts[stage]))


def _run_local_step(step, tasks: int, workers: int, logging_dir: str, skip_completed: bool = True,
                    gpus_per_task: int = 0, start_method: str = START_METHOD) -> None:
    """One pipeline step as ``tasks`` datatrove tasks on this machine, ``workers`` at a time (each worker on its
    own ``gpus_per_task`` GPUs when given)."""
    logger.disable("datatrove")
    # The worker pool is stopped with SIGTERM: forked workers must not inherit a handler that catches it (a Ray
    # driver's, a trainer's in the same process), or closing the pool waits on them forever.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None
    try:
        executor = _QuietLocalExecutor([step], tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir,
                                       start_method=start_method, skip_completed=skip_completed)
        executor.gpus_per_task = gpus_per_task
        executor.run()
    finally:
        logger.enable("datatrove")
        if main:
            signal.signal(signal.SIGTERM, previous)


class _Watcher:
    """While the context is open, a thread runs ``_watch`` (a progress bar over files that tasks in other
    processes finish, on whatever executor); it polls every ``interval`` seconds until ``_stop`` is set."""

    def __init__(self, enabled: bool, interval: float) -> None:
        self.enabled, self.interval = enabled, interval
        self._stop = threading.Event()

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def _watch(self) -> None:
        raise NotImplementedError


class TaskProgress(_Watcher):
    """A progress bar over tasks' results: ``done()`` counts those finished, up to ``total``."""

    def __init__(self, done, total: int, desc: str, unit: str = "shard", enabled: bool = True,
                 interval: float = 0.5) -> None:
        super().__init__(enabled, interval)
        self.done, self.total, self.desc, self.unit = done, total, desc, unit

    def _watch(self) -> None:
        bar = tqdm(total=self.total, desc=self.desc, unit=self.unit)
        while True:
            stopping = self._stop.is_set()
            bar.update(min(self.done(), self.total) - bar.n)
            if stopping or bar.n >= self.total:
                break
            self._stop.wait(self.interval)
        bar.close()


def run_step(step, tasks: int, workers: int, logging_dir: str, executor: str = "local",
             slurm: SlurmSettings | None = None, ray_address: str | None = None, dry_run: bool = False,
             progress: bool = True, desc: str = "tasks", done=None, total: int = 0, unit: str = "shard",
             skip_completed: bool = True, gpus_per_task: int = 0, slurm_then=None,
             start_method: str = START_METHOD) -> list[str]:
    """Run one pipeline step (a :class:`datatrove.pipeline.base.PipelineStep` whose task ``rank`` of
    ``world_size`` does its share) on an executor. Finished tasks recorded under ``logging_dir`` are skipped on a
    rerun; ``skip_completed=False`` runs every task again, for steps that keep their own record of finished work
    (which outlives datatrove's when a result is removed). A progress bar counts ``done()`` up to ``total``.
    ``gpus_per_task``: Ray's ``num_gpus``, Slurm's ``--gres=gpu:N`` (unless the settings name a gres), and on this
    machine each worker's own ``CUDA_VISIBLE_DEVICES``; ``start_method`` of local workers (``spawn`` for tasks
    that run torch: a forked child of a process whose OpenMP threads ran can hang). ``slurm_then``: on Slurm, a step
    run as a one-task job that depends on the array job (a merge; elsewhere the caller runs its follow-up itself
    once this returns).
    Returns the sbatch scripts when the step went to Slurm (with ``dry_run`` only written), else ``[]``."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
    if dry_run and executor != "slurm":
        raise ExecutorError("--dry-run is for the slurm executor (it writes the sbatch script without submitting)")
    watch = TaskProgress(done, total, desc, unit, enabled=progress and done is not None and executor != "slurm")
    if executor in ("local", "ray"):
        with watch:
            if executor == "local":
                _run_local_step(step, tasks, workers, logging_dir, skip_completed, gpus_per_task, start_method)
            else:
                RayPipelineExecutor = _ray_executor(ray_address)
                RayPipelineExecutor([step], tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir,
                                    skip_completed=skip_completed, gpus_per_task=gpus_per_task).run()
        return []
    settings = slurm or SlurmSettings()
    if not settings.partition:
        raise ExecutorError("the slurm executor needs a partition: `--slurm-partition P`")
    sbatch_args = settings.all_sbatch_args()
    if gpus_per_task and "gres" not in sbatch_args:
        sbatch_args["gres"] = f"gpu:{gpus_per_task}"
    executors = [_slurm_executor(settings, step, tasks, workers if tasks > 1 else 1, settings.job_name, logging_dir,
                                 sbatch_args, skip_completed=skip_completed)]
    if slurm_then is not None:
        executors.append(_slurm_executor(settings, slurm_then, 1, -1, f"{settings.job_name}-merge",
                                         f"{logging_dir}-merge", dict(settings.sbatch_args), cpus_per_task=1,
                                         skip_completed=False, depends=executors[0]))
    scripts = [slurm_script(e) for e in executors]
    if not dry_run:
        executors[-1].run()  # submits the chain: the array job, then what depends on it
    return scripts


class StageProgress(_Watcher):
    """A progress bar for a preparation stage: it watches the files its tasks finish (shards with their document
    and token counts; chunk results), so it shows docs/s and tokens/s whatever runs the tasks."""

    def __init__(self, run: PrepareRun, stage: str, enabled: bool = True, interval: float = 0.5) -> None:
        super().__init__(enabled and stage in ("tokenize", "write"), interval)
        self.run, self.stage = run, stage

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


def _slurm_executor(settings: SlurmSettings, step, tasks: int, workers: int, job_name: str, logging_dir: str,
                    sbatch_args: dict, **kwargs):
    """datatrove's Slurm executor for ``tasks`` tasks of ``step``, ``workers`` at once (-1: no cap), with the
    settings' partition, time, resources and env command (``kwargs``: ``depends``, ``skip_completed``, a
    ``cpus_per_task`` of its own)."""
    from datatrove.executor.slurm import SlurmPipelineExecutor

    kwargs.setdefault("cpus_per_task", settings.cpus_per_task)
    return SlurmPipelineExecutor(
        [step], tasks=tasks, workers=workers, time=settings.time, partition=settings.partition,
        mem_per_cpu_gb=settings.mem_per_cpu_gb, job_name=job_name, env_command=settings.env_command,
        sbatch_args=sbatch_args, logging_dir=logging_dir, **kwargs)


def slurm_executors(run: PrepareRun, tasks: int | None, workers: int, settings: SlurmSettings) -> list:
    """One Slurm array job per stage, each depending on the one before."""
    if not settings.partition:
        raise ExecutorError("the slurm executor needs a partition: `--slurm-partition P` (or `slurm: {partition: P}` "
                            "in the recipe)")
    counts = stage_tasks(run, tasks)
    executors, previous = [], None
    for stage, step in STAGES:
        workers_ = workers if counts[stage] > 1 else 1
        previous = _slurm_executor(settings, step(run), counts[stage], workers_, f"{settings.job_name}-{stage}",
                                   _logging_dir(run, stage, counts[stage]), settings.all_sbatch_args(),
                                   depends=previous)
        executors.append(previous)
    return executors


def slurm_dry_run(executors: list) -> list[tuple[str, str]]:
    """The sbatch scripts the Slurm executors would submit, without submitting: (stage, script) pairs. The
    ``--dependency`` of each stage on the previous one is added by ``sbatch`` arguments at submission."""
    return [(stage, slurm_script(executor)) for (stage, _), executor in zip(STAGES, executors)]


def slurm_script(executor) -> str:
    """The sbatch script a datatrove Slurm executor submits."""
    command = f"launch_pickled_pipeline {shlex.quote(executor.logging_dir.resolve_paths('executor.pik'))}"
    return executor.get_launch_file_contents(executor.get_sbatch_args(executor.world_size), command)


def _ray_executor(address: str | None):
    """datatrove's Ray executor class, with Ray started (or joined at ``address``)."""
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as error:
        raise ExecutorError(f"the ray executor needs Ray: pip install 'k2hf[ray]' ({error})") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return RayPipelineExecutor


def run_ray(run: PrepareRun, tasks: int | None, workers: int, address: str | None, progress: bool = True) -> None:
    """All four stages on a Ray cluster (``address``), or on a local Ray started here."""
    RayPipelineExecutor = _ray_executor(address)
    counts = stage_tasks(run, tasks)
    for stage, step in STAGES:
        executor = RayPipelineExecutor([step(run)], tasks=counts[stage], workers=min(workers, counts[stage]),
                                       logging_dir=_logging_dir(run, stage, counts[stage]))
        with StageProgress(run, stage, enabled=progress):
            executor.run()


if __name__ == "__main__":
    _run_pickled_task(*sys.argv[1:3])
