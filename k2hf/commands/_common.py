"""What the command modules share: the options a user gave, the executor flags of jobs made of tasks, and how
checkpoints are loaded."""

from __future__ import annotations

import argparse


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options the user gave (flags default to None): everything else takes the library's own default,
    stated once, where it is implemented."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_executor_flags(parser: argparse.ArgumentParser, tasks_help: str, tasks_flags: tuple[str, ...] = ("--tasks",),
                       gpus: bool = False) -> None:
    """Who runs a job's tasks (datatrove's executors) and their Slurm / Ray settings; ``gpus``: tasks that load
    models (GPUs per task; Slurm's gres)."""
    parser.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                        help="who runs the tasks (datatrove): this machine, a Slurm cluster, a Ray cluster")
    parser.add_argument(*tasks_flags, type=int, default=None, help=f"at most this many {tasks_help}")
    parser.add_argument("--workers", type=int, default=None, help="tasks run at once")
    if gpus:
        parser.add_argument("--gpus-per-task", type=int, default=0,
                            help="GPUs each task gets and spreads its checkpoint over (Slurm: --gres=gpu:N, Ray: "
                                 "num_gpus, local: each worker its own CUDA_VISIBLE_DEVICES)")
        parser.add_argument("--slurm-gres", help="Slurm generic resources per task, e.g. gpu:a100:2 (default: "
                                                 "gpu:N from --gpus-per-task)")
    parser.add_argument("--slurm-config", help="YAML of slurm settings (partition, time, gres, cpus_per_task, "
                                               "env_command, sbatch_args: {account: ...}); flags win")
    parser.add_argument("--slurm-partition", help="Slurm partition (or `slurm: {partition: ...}` in a recipe)")
    parser.add_argument("--slurm-time", help="Slurm time limit per task, e.g. 04:00:00")
    parser.add_argument("--slurm-cpus-per-task", type=int)
    parser.add_argument("--slurm-job-name")
    parser.add_argument("--slurm-env",
                        help="shell command run before each Slurm task (e.g. 'source .venv/bin/activate')")
    parser.add_argument("--dry-run", action="store_true", help="slurm: write and print the sbatch scripts only")
    parser.add_argument("--ray-address", help="ray: the cluster to join (default: a local Ray started here)")


def slurm_flags(args: argparse.Namespace) -> dict:
    """The Slurm settings given as flags over those of ``--slurm-config`` (the rest come from a recipe or the
    defaults)."""
    from k2hf.pretrain.data.executors import read_slurm_config

    flags = {"partition": args.slurm_partition, "time": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
             "job_name": args.slurm_job_name, "env_command": args.slurm_env, "gres": getattr(args, "slurm_gres", None)}
    from_file = read_slurm_config(args.slurm_config) if args.slurm_config else {}
    return {**from_file, **{k: v for k, v in flags.items() if v is not None}}


def execution(args: argparse.Namespace):
    """The :class:`~k2hf.analysis.checkpoint_tasks.Execution` the executor flags ask for."""
    from k2hf.analysis.checkpoint_tasks import Execution
    from k2hf.pretrain.data.executors import slurm_settings

    tasks = args.executor_tasks if hasattr(args, "executor_tasks") else args.tasks  # eval: --tasks is the harness's
    return Execution(executor=args.executor, tasks=tasks, workers=args.workers,
                     gpus_per_task=args.gpus_per_task, slurm=slurm_settings(slurm_flags(args)),
                     ray_address=args.ray_address, dry_run=args.dry_run)


def add_loading_flags(parser: argparse.ArgumentParser) -> None:
    """How each checkpoint is loaded: dtype, one device, or spread over devices (accelerate's big-model loading)."""
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="one device, e.g. cuda (default: where from_pretrained puts "
                        "it); or `auto` to spread a big checkpoint over every visible GPU (then CPU, then disk)")
    parser.add_argument("--max-memory", help="per device when spreading, e.g. 0=76GiB,1=76GiB,cpu=200GiB")
    parser.add_argument("--offload-folder", help="where weights that fit nowhere else go (disk offload)")


def loading_kwargs(args: argparse.Namespace) -> dict:
    """``from_pretrained`` keyword arguments from :func:`add_loading_flags`'s flags."""
    from accelerate.utils import convert_file_size_to_int

    from k2hf.errors import UserError

    kwargs = {}
    if args.dtype:
        kwargs["dtype"] = args.dtype
    if args.device:
        kwargs["device_map"] = args.device
    if args.max_memory:
        if not args.device:
            raise UserError("--max-memory spreads a checkpoint over devices: give --device auto with it")
        budget = {}
        for part in args.max_memory.split(","):
            device, eq, size = part.partition("=")
            if not eq or not device.strip() or not size.strip():
                raise UserError(f"--max-memory: {part!r} is not DEVICE=SIZE (e.g. 0=76GiB,cpu=200GiB)")
            device, size = device.strip(), size.strip()
            try:  # checked here, before any task loads a checkpoint with it
                convert_file_size_to_int(int(size) if size.isdigit() else size)
            except ValueError:
                raise UserError(f"--max-memory: {size!r} is not a size (bytes, or e.g. 76GiB, 200GB)") from None
            budget[int(device) if device.isdigit() else device] = int(size) if size.isdigit() else size
        kwargs["max_memory"] = budget
    if args.offload_folder:
        kwargs["offload_folder"] = args.offload_folder
    return kwargs
