"""pretrain/slurm/pretrain.sbatch, run by bash with stand-ins for Slurm's commands and the launcher: the launch line
each node gets, and the preemption path (USR1 to the script -> every node's launcher -> exit 75 -> requeue)."""

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "pretrain" / "slurm" / "pretrain.sbatch"

# srun: run the command once per node (SLURM_NODEID 0..N-1) and exit with the highest status, as a job step does
SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || { code=$?; (( code > status )) && status=$code; }; done
exit $status
"""
SCONTROL = """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-017\\ngpu-018\\n'; else echo "scontrol $*" >> "$FAKE_LOG"; fi
"""
# scancel --signal=SIG JOB: signal every launcher (the job's steps)
SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$FAKE_LOG"
sig=${1#--signal=}
for pid in $(cat "$FAKE_DIR"/launcher.*.pid); do kill -s "$sig" "$pid"; done
"""
# accelerate: record the launch line and the signal settings; in "wait" mode, run until USR1, then exit 75 as the
# ranks do after saving
ACCELERATE = """#!/bin/bash
echo "node $SLURM_NODEID: accelerate $*" >> "$FAKE_LOG"
echo "node $SLURM_NODEID: signals $PET_SIGNALS_TO_HANDLE grace $PET_SHUTDOWN_TIMEOUT" >> "$FAKE_LOG"
[ "$FAKE_MODE" = wait ] || exit 0
trap 'echo "node $SLURM_NODEID: USR1" >> "$FAKE_LOG"; exit 75' USR1
echo $$ > "$FAKE_DIR/launcher.$SLURM_NODEID.pid"
while true; do sleep 0.05; done
"""


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"srun": SRUN, "scontrol": SCONTROL, "scancel": SCANCEL, "accelerate": ACCELERATE}.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    # the venv's bin (its `k2hf`, which the script asks for the bundled recipes' paths) as an activated venv has it
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "FAKE_LOG": str(tmp_path / "log"),
           "FAKE_DIR": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu-[017-018]"}
    return env, tmp_path / "log"


def _sbatch_options() -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", SCRIPT.read_text(), flags=re.M))


def test_the_script_asks_slurm_for_a_signal_before_the_limit_and_for_requeue():
    options = _sbatch_options()
    assert options["signal"] == "B:USR1@600" and "requeue" in options
    assert options["ntasks-per-node"] == "1" and options["gpus-per-node"] == "8"
    assert os.access(SCRIPT, os.X_OK)


def test_each_of_two_nodes_gets_its_launch_line(fake_slurm):
    env, log = fake_slurm
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = sorted(log.read_text().splitlines())
    launches = [line for line in lines if ": accelerate " in line]
    assert len(launches) == 2
    zero3 = REPO_ROOT / "pretrain" / "accelerate" / "zero3.yaml"
    stage1 = REPO_ROOT / "pretrain" / "configs" / "k2_65b_stage1.yaml"
    for node, line in enumerate(launches):
        assert line == (
            f"node {node}: accelerate launch --config_file {zero3} --deepspeed_multinode_launcher standard "
            f"--num_machines 2 --num_processes 16 --machine_rank {node} --main_process_ip gpu-017 "
            f"--main_process_port 29500 -m k2hf.pretrain.train --config {stage1}")
    assert "node 1: signals SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 grace 570" in lines
    assert not any(line.startswith("scontrol requeue") for line in lines)  # a finished run is not requeued


def test_usr1_before_the_time_limit_reaches_every_launcher_and_requeues_the_job(fake_slurm):
    env, log = fake_slurm
    env = {**env, "FAKE_MODE": "wait", "CONFIG": "my-recipes/stage1.yaml", "GPUS_PER_NODE": "4"}
    script = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    pids = [Path(env["FAKE_DIR"]) / f"launcher.{n}.pid" for n in (0, 1)]
    deadline = time.monotonic() + 60
    while not all(p.is_file() and p.read_text().strip() for p in pids):
        assert time.monotonic() < deadline and script.poll() is None, script.communicate()
        time.sleep(0.05)
    script.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@600` does
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    lines = log.read_text().splitlines()
    assert "scancel --signal=USR1 4242" in lines
    assert {"node 0: USR1", "node 1: USR1"} <= set(lines)
    assert lines[-1] == "scontrol requeue 4242"
    assert "--num_processes 8" in lines[0] and "--config my-recipes/stage1.yaml" in lines[0]
    assert "requeueing job 4242" in out
