"""Per-checkpoint analyses as tasks: one task per checkpoint (or per group of checkpoints) on this machine, a
Slurm cluster or a Ray cluster (datatrove's executors, as ``k2hf data prepare`` uses), then one merge.

An analysis (eval sweep, memorization, gallery, trace) is a :class:`CheckpointJob`: what one checkpoint gives
(``run_checkpoint``, a JSON-able result) and how the results become the analysis's outputs (``merge``). Each
result is saved as ``OUT/checkpoints/<name>.json`` with the job's settings fingerprint and the checkpoint's
identity; that file is the record of finished work, so a rerun (or a requeued task) skips what is done, and a
result of other settings, or of a checkpoint a spike rollback replaced, is computed again. A checkpoint that
fails writes its one-line reason to ``OUT/.tasks/failed/<name>.txt`` instead; the task goes on with its other
checkpoints and the merge reports the failure beside the results that landed. Run sequentially in this process
or as tasks, the merge reads the same files, so the outputs are the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from datatrove.pipeline.base import PipelineStep
from tqdm.auto import tqdm

import k2hf.checkpoints as checkpoints_api
from k2hf.checkpoints import Checkpoint
from k2hf.errors import UserError
from k2hf.formats import TRAINER_STATE

logger = logging.getLogger(__name__)

PARTS = "checkpoints"
TASKS = ".tasks"


@dataclass
class Execution:
    """Who runs the checkpoints: ``local`` with ``workers`` processes (1 and no ``tasks``: this process, in
    order), ``slurm`` (``slurm`` settings; ``dry_run`` writes the sbatch scripts only) or ``ray``
    (``ray_address``, default a local Ray). ``tasks``: at most this many tasks (default one per checkpoint);
    ``gpus_per_task``: the GPUs each task gets and loads its checkpoint across."""

    executor: str = "local"
    tasks: int | None = None
    workers: int | None = None
    gpus_per_task: int = 0
    slurm: Any = None  # k2hf.pretrain.data.executors.SlurmSettings
    ray_address: str | None = None
    dry_run: bool = False

    @property
    def in_process(self) -> bool:
        return self.executor == "local" and (self.workers or 1) <= 1 and self.tasks is None

    def workers_for(self, tasks: int) -> int:
        if self.workers:
            return self.workers
        return 1 if self.executor == "local" else -1 if self.executor == "slurm" else tasks


class CheckpointsFailed(UserError):
    """Some checkpoints failed (their reasons are in the merged outputs too); the others' results landed."""

    def __init__(self, failed: dict[str, str], total: int) -> None:
        self.failed, self.total = failed, total
        super().__init__(failures_text(failed, total).replace("\n  ", " | ").replace(":\n", ": "))


@dataclass
class Merged:
    """What a run of a job gave: the merged outputs' main file, the checkpoints that failed (name -> reason), and
    the sbatch scripts when the tasks went to Slurm (then nothing is merged yet: the merge job does it)."""

    path: Path | None
    failed: dict[str, str] = field(default_factory=dict)
    slurm_scripts: list[str] = field(default_factory=list)
    value: Any = None
    dry_run: bool = False
    total: int = 0

    def checked(self) -> Merged:
        """Itself, or :class:`CheckpointsFailed` when a checkpoint failed."""
        if self.failed:
            raise CheckpointsFailed(self.failed, self.total)
        return self


def checkpoint_identity(checkpoint: Checkpoint) -> dict:
    """What says a saved result is of this very checkpoint: for a run's checkpoint, its trainer state (a spike
    rollback that writes ``ckpt_005`` again writes another one); for a Hub branch or a model dir, where it is."""
    identity = {"name": checkpoint.name, "location": checkpoint.location}
    if checkpoint.path is not None and (checkpoint.path / TRAINER_STATE).is_file():
        identity["trainer_state_sha256"] = hashlib.sha256((checkpoint.path / TRAINER_STATE).read_bytes()).hexdigest()
    return identity


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over: readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def input_device(model):
    """Where a loaded model takes its inputs: its embeddings' device, or the CPU for a model dispatched across
    devices whose embeddings are offloaded (accelerate's hooks move the inputs on)."""
    import torch

    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class CheckpointJob:
    """One analysis over ``checkpoints`` of ``source``, written into ``out``. Subclasses set ``analysis`` and
    implement ``settings`` (everything a result depends on besides the checkpoint), ``run_checkpoint`` and
    ``merge``. A job is pickled to its tasks (datatrove's executors), so it holds settings and paths, never a
    loaded model or an open index."""

    analysis: ClassVar[str] = "analysis"
    unit: ClassVar[str] = "checkpoint"

    def __init__(self, source: str | os.PathLike, out: str | os.PathLike, checkpoints: Sequence[Checkpoint],
                 load_kwargs: dict | None = None) -> None:
        if not checkpoints:
            raise UserError("no checkpoints selected")
        self.source, self.out = str(source), Path(out).resolve()
        self.checkpoints = list(checkpoints)
        self.load_kwargs = dict(load_kwargs or {})
        self.cwd = os.getcwd()  # tasks run there (a Ray worker starts elsewhere): relative paths mean the same
        self._fingerprint: str | None = None

    # ---------------------------------------------------------------- what subclasses give
    def settings(self) -> dict:
        raise NotImplementedError

    def run_checkpoint(self, checkpoint: Checkpoint) -> dict:
        raise NotImplementedError

    def merge(self, results: dict[str, dict], failed: dict[str, str]) -> Merged:
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def load(self, checkpoint: Checkpoint):
        """The checkpoint's model (eval mode; ``load_kwargs``: dtype, device_map, max_memory, offload_folder) and
        its tokenizer."""
        model, tokenizer = checkpoints_api.load_with_tokenizer(self.source, checkpoint, **self.load_kwargs)
        return model.eval(), tokenizer

    def fingerprint(self) -> str:
        """A hash of everything the results depend on besides the checkpoint (computed once: a settings dict can
        hold every checkpoint's planned rows)."""
        if self._fingerprint is None:
            text = json.dumps({"analysis": self.analysis, "source": self.source, **self.settings()}, sort_keys=True,
                              default=str)
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprint

    def part_path(self, checkpoint: Checkpoint) -> Path:
        return self.out / PARTS / f"{checkpoint.name}.json"

    def failure_path(self, checkpoint: Checkpoint) -> Path:
        return self.out / TASKS / "failed" / f"{checkpoint.name}.txt"

    def result(self, checkpoint: Checkpoint) -> dict | None:
        """The saved result of ``checkpoint`` under these settings, or None (not run, other settings, or another
        checkpoint of that name)."""
        path = self.part_path(checkpoint)
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if part.get("job") != self.fingerprint() or part.get("checkpoint") != checkpoint_identity(checkpoint):
            return None
        return part["result"]

    def failure(self, checkpoint: Checkpoint) -> str | None:
        path = self.failure_path(checkpoint)
        return path.read_text().strip() if path.is_file() else None

    def run_one(self, checkpoint: Checkpoint) -> None:
        """Compute and save one checkpoint's result; a failure is saved as its one-line reason (and logged whole)
        rather than raised, so the task's other checkpoints still run."""
        self.failure_path(checkpoint).unlink(missing_ok=True)
        try:
            result = self.run_checkpoint(checkpoint)
        except Exception as error:  # noqa: BLE001 - one checkpoint's failure must not stop the others
            logger.exception("%s of %s failed", self.analysis, checkpoint.name)
            write_atomic(self.failure_path(checkpoint), one_line(error) + "\n")
            return
        part = {"job": self.fingerprint(), "checkpoint": checkpoint_identity(checkpoint), "result": result}
        write_atomic(self.part_path(checkpoint), json.dumps(part, ensure_ascii=False, indent=1))

    def groups(self, tasks: int) -> list[list[Checkpoint]]:
        """``tasks`` contiguous groups of the checkpoints still to run (near-equal sizes)."""
        todo = [c for c in self.checkpoints if self.result(c) is None]
        tasks = max(1, min(tasks, len(todo)))
        size, extra = divmod(len(todo), tasks)
        bounds = [i * size + min(i, extra) for i in range(tasks + 1)]
        return [todo[bounds[i] : bounds[i + 1]] for i in range(tasks)]

    def merge_outputs(self) -> Merged:
        """Every checkpoint's result, in the checkpoints' order, into the analysis's outputs."""
        results, failed = {}, {}
        for checkpoint in self.checkpoints:
            result = self.result(checkpoint)
            if result is not None:
                results[checkpoint.name] = result
            else:
                failed[checkpoint.name] = self.failure(checkpoint) or "not run (its task did not finish: rerun)"
        merged = self.merge(results, failed)
        merged.failed, merged.total = failed, len(self.checkpoints)
        return merged


class CheckpointTasks(PipelineStep):
    """The datatrove task that runs group ``rank`` of the job's checkpoints."""

    name = "k2hf per-checkpoint analysis"
    type = "k2hf"

    def __init__(self, job: CheckpointJob, groups: list[list[str]]) -> None:
        super().__init__()
        self.job, self.group_names = job, groups

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        os.chdir(self.job.cwd)
        by_name = {c.name: c for c in self.job.checkpoints}
        for name in self.group_names[rank]:
            checkpoint = by_name[name]
            if self.job.result(checkpoint) is None:
                self.job.run_one(checkpoint)
                self.stat_update("checkpoints")
        yield from ()


class MergeStep(PipelineStep):
    """The merge, as the one task of a Slurm job that runs after the checkpoints' array job."""

    name = "k2hf merge"
    type = "k2hf"

    def __init__(self, job: CheckpointJob) -> None:
        super().__init__()
        self.job = job

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        os.chdir(self.job.cwd)
        merged = self.job.merge_outputs()
        if merged.failed:
            logger.warning("%d checkpoint(s) failed: %s", len(merged.failed), merged.failed)
        yield from ()


def run_job(job: CheckpointJob, execution: Execution | None = None, progress: bool = True) -> Merged:
    """Run ``job`` on ``execution``'s executor, skipping finished checkpoints, and merge. On Slurm the merge is a
    job of its own that runs after the checkpoints' array job (``job.out/.tasks/*.slurm`` hold the scripts)."""
    from k2hf.pretrain.data.executors import run_step

    execution = execution or Execution()
    job.out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in job.checkpoints if job.result(c) is None]
    logger.info("%s: %d checkpoint(s), %d to run", job.analysis, len(job.checkpoints), len(todo))
    if todo and execution.in_process:
        bar = tqdm(todo, desc=job.analysis, unit=job.unit, disable=not progress)
        for checkpoint in bar:
            bar.set_postfix(checkpoint=checkpoint.name)
            job.run_one(checkpoint)
    elif todo:
        groups = job.groups(execution.tasks or len(todo) or 1)
        for checkpoint in todo:  # a stale result (other settings, a rewritten checkpoint) or an old failure goes:
            job.part_path(checkpoint).unlink(missing_ok=True)  # the progress bar then counts files that appear
            job.failure_path(checkpoint).unlink(missing_ok=True)
        scripts = run_step(
            CheckpointTasks(job, [[c.name for c in g] for g in groups]), tasks=len(groups),
            workers=execution.workers_for(len(groups)), logging_dir=str(job.out / TASKS / f"logs-t{len(groups)}"),
            executor=execution.executor, slurm=_named(execution.slurm, job.analysis),
            ray_address=execution.ray_address, dry_run=execution.dry_run, progress=progress, desc=job.analysis,
            done=lambda: sum(job.part_path(c).is_file() or job.failure_path(c).is_file() for c in todo),
            total=len(todo), unit=job.unit, skip_completed=False, gpus_per_task=execution.gpus_per_task,
            slurm_then=MergeStep(job),
            start_method="spawn")  # workers run torch: a fork of this process (its OpenMP threads ran) can hang
        if scripts:
            for kind, script in zip(("tasks", "merge"), scripts):
                (job.out / TASKS / f"{job.analysis}-{kind}.slurm").write_text(script)
            return Merged(None, slurm_scripts=scripts, dry_run=execution.dry_run, total=len(job.checkpoints))
    return job.merge_outputs()


def _named(slurm, analysis: str):
    """The Slurm settings with the analysis as job name unless one was given."""
    from dataclasses import replace

    from k2hf.pretrain.data.executors import SlurmSettings

    slurm = slurm or SlurmSettings()
    return replace(slurm, job_name=f"k2hf-{analysis}") if slurm.job_name == SlurmSettings.job_name else slurm


def failures_text(failed: dict[str, str], total: int) -> str:
    """``k of n checkpoints failed:`` and one line per failure (the CLI's report)."""
    lines = [f"{len(failed)} of {total} checkpoints failed (rerun the same command to retry them):"]
    return "\n".join(lines + [f"  {name}: {reason}" for name, reason in failed.items()])


__all__ = ["PARTS", "CheckpointJob", "CheckpointTasks", "CheckpointsFailed", "Execution", "MergeStep", "Merged",
           "checkpoint_identity", "failures_text", "input_device", "one_line", "run_job", "write_atomic"]
