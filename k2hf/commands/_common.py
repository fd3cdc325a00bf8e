"""What the command modules share: the options a user gave, and the ``--set KEY=VALUE`` flag."""

from __future__ import annotations

import argparse


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options the user gave (flags default to None): everything else takes the library's own default,
    stated once, where it is implemented."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, dotted for sections (optim.lr=3e-4)")


def add_executor_flags(parser: argparse.ArgumentParser, tasks_help: str) -> None:
    """Who runs a job's tasks (datatrove's executors) and their Slurm / Ray settings."""
    parser.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                        help="who runs the tasks (datatrove): this machine, a Slurm cluster, a Ray cluster")
    parser.add_argument("--tasks", type=int, default=None, help=f"at most this many {tasks_help}")
    parser.add_argument("--workers", type=int, default=None, help="tasks run at once")
    parser.add_argument("--slurm-partition", help="Slurm partition (or `slurm: {partition: ...}` in a recipe)")
    parser.add_argument("--slurm-time", help="Slurm time limit per task, e.g. 04:00:00")
    parser.add_argument("--slurm-cpus-per-task", type=int)
    parser.add_argument("--slurm-job-name")
    parser.add_argument("--slurm-env",
                        help="shell command run before each Slurm task (e.g. 'source .venv/bin/activate')")
    parser.add_argument("--dry-run", action="store_true", help="slurm: write and print the sbatch scripts only")
    parser.add_argument("--ray-address", help="ray: the cluster to join (default: a local Ray started here)")


def slurm_flags(args: argparse.Namespace) -> dict:
    """The Slurm settings given as flags (the rest come from a recipe or the defaults)."""
    flags = {"partition": args.slurm_partition, "time": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
             "job_name": args.slurm_job_name, "env_command": args.slurm_env}
    return {k: v for k, v in flags.items() if v is not None}
