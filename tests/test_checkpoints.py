"""Checkpoints of a Hub repo (the real huggingface_hub client against a local stand-in Hub) and of a run dir."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import k2hf.checkpoints
from conftest import REPO_ROOT
from hub_server import HubServer
from k2hf import cli


def _hub_env(hub: HubServer, tmp_path) -> dict:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO_ROOT)}


def _in_subprocess(env: dict, code: str) -> subprocess.CompletedProcess:
    """The Hub client reads HF_ENDPOINT / offline mode at import: a fresh interpreter sees the test's Hub."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def k2_like_hub(drill_run):
    """``LLM360/K2`` with branches main, dev, ckpt_001, ckpt_002 and ckpt_010 (numeric, not string, order)."""
    ck = drill_run / "checkpoints"
    repos = {("model", "LLM360/K2"): {"main": ck / "ckpt_004", "dev": ck / "ckpt_001", "ckpt_010": ck / "ckpt_003",
                                      "ckpt_001": ck / "ckpt_001", "ckpt_002": ck / "ckpt_002"},
             ("model", "someone/plain-model"): {"main": ck / "ckpt_004"}}
    with HubServer(repos) as hub:
        yield hub


def test_hub_listing_and_loading_through_the_real_client(k2_like_hub, drill_run, tmp_path):
    code = (
        "import json, k2hf.checkpoints as C\n"
        "cs = C.list('LLM360/K2')\n"
        "model = C.load('LLM360/K2', 10)\n"
        "model.save_pretrained('" + str(tmp_path / "loaded") + "')\n"
        "print(json.dumps([[[c.name, c.revision, c.number, c.chunk, c.kind] for c in cs], type(model).__name__]))\n"
    )
    result = _in_subprocess(_hub_env(k2_like_hub, tmp_path), code)
    assert result.returncode == 0, result.stderr[-2000:]
    listing, cls = json.loads(result.stdout.strip().splitlines()[-1])
    # numeric order, only ckpt_N branches, revision = branch, chunk from K2's real order (order[9] = 9)
    assert listing == [["ckpt_001", "ckpt_001", 1, 0, "chunk"], ["ckpt_002", "ckpt_002", 2, 1, "chunk"],
                                   ["ckpt_010", "ckpt_010", 10, 9, "chunk"]]
    assert cls == "K2ForCausalLM"
    served = load_file(drill_run / "checkpoints" / "ckpt_003" / "model.safetensors")
    loaded = load_file(tmp_path / "loaded" / "model.safetensors")
    assert served.keys() == loaded.keys() and all(torch.equal(served[k], loaded[k]) for k in served)
    assert "GET /api/models/LLM360/K2/refs" in k2_like_hub.requests
    assert any(r.startswith("GET /api/models/LLM360/K2/revision/ckpt_010") for r in k2_like_hub.requests)


@pytest.mark.slow  # the k2hf CLI in subprocesses: ~20 s of interpreter starts
def test_hub_cli_and_errors(k2_like_hub, tmp_path):
    env = _hub_env(k2_like_hub, tmp_path)
    result = _in_subprocess(env, "from k2hf.cli import main; raise SystemExit(main(['checkpoints', 'list', "
                                 "'LLM360/K2']))")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], r[4], r[5]) for r in rows] == [("ckpt_001", "0", "LLM360/K2@ckpt_001"),
                                                  ("ckpt_002", "1", "LLM360/K2@ckpt_002"),
                                                  ("ckpt_010", "9", "LLM360/K2@ckpt_010")]
    result = _in_subprocess(env, "from k2hf.cli import main; raise SystemExit(main(['checkpoints', 'list', "
                                 "'someone/plain-model']))")
    assert result.returncode == 2
    assert result.stderr.strip() == "k2hf: error: someone/plain-model has no ckpt_NNN branches (it has: ['main'])"
    result = _in_subprocess(env, "from k2hf.cli import main; raise SystemExit(main(['checkpoints', 'list', "
                                 "'someone/missing']))")
    assert (result.returncode, result.stderr.strip()) == (
        2, "k2hf: error: someone/missing is not a model repo on the Hub (nor a local dir)")
    result = _in_subprocess(env, "import k2hf.checkpoints as C; C.load('LLM360/K2', 3)")
    assert "there is no ckpt_003 (checkpoint numbers here: 1..10)" in result.stderr


def test_run_dir_listing_marks_every_kind(drill_run, capsys):
    found = [(c.name, c.kind, c.number, c.global_step, c.tokens_seen, c.chunk)
             for c in k2hf.checkpoints.list(drill_run)]
    # 2 rows x 64 tokens per step; the spike evidence is the diverged state at detection (step 22, in chunk 2);
    # after the rollback chunk 3 ran before the deferred chunk 2 (step checkpoints every 4 steps, newest 2 kept)
    assert found == [
        ("ckpt_001", "chunk", 1, 9, 9 * 128, 0),
        ("ckpt_002", "chunk", 2, 18, 18 * 128, 1),
        ("spike_001_step_0000022", "spike_evidence", None, 22, 22 * 128, 2),
        ("ckpt_003", "chunk", 3, 27, 27 * 128, 3),
        ("step_0000028", "step", None, 28, 28 * 128, 2),
        ("step_0000032", "step", None, 32, 32 * 128, 2),
        ("ckpt_004", "chunk", 4, 36, 36 * 128, 2),
    ]
    model = k2hf.checkpoints.load(drill_run, "step_0000032")
    assert type(model).__name__ == "K2ForCausalLM"
    assert cli.main(["checkpoints", "list", str(drill_run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split()[:6] == ["spike_001_step_0000022", "spike_evidence", "22", "2816", "2",
                                    str(drill_run / "spikes" / "spike_001_step_0000022")]


def test_local_source_errors_name_the_real_cause(tmp_path, capsys):
    assert cli.main(["checkpoints", "list", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"k2hf: error: {tmp_path / 'missing'} does not exist (a local path); give a run dir, a model dir or a Hub "
        "repo id")
    assert cli.main(["checkpoints", "list", str(tmp_path)]) == 2
    assert "neither a k2hf run dir (no checkpoints/) nor a model dir (no config.json)" in capsys.readouterr().err


def test_memorization_on_the_hub_uses_k2s_order(k2_like_hub, tmp_path, tiny_tokenizer):
    """`k2hf analyze memorization --model LLM360/K2 --data <imported K2Datasets>`: ckpt_N draws only from the
    first N chunks of K2's real order (ckpt_001: chunk 0; ckpt_002: 0-1; ckpt_010: 0-9)."""
    from test_import_k2 import write_release

    from k2hf.pretrain.data.import_k2 import import_k2

    write_release(tmp_path / "release", len(tiny_tokenizer), rows_per_chunk=6, chunks=(0, 1, 5))
    import_k2(str(tmp_path / "release"), tmp_path / "k2", tokenizer="sample", chunks=[0, 1, 5], seq_len=64,
              progress=False)
    code = ("import csv\nfrom k2hf.analysis.memorization import MemorizationConfig, analyze_memorization\n"
            f"analyze_memorization('LLM360/K2', {str(tmp_path / 'mem')!r}, data={str(tmp_path / 'k2')!r}, "
            "chunks=[0, 1, 5], config=MemorizationConfig(samples=12), progress=False)\n")
    result = _in_subprocess(_hub_env(k2_like_hub, tmp_path), code)
    assert result.returncode == 0, result.stderr[-2000:]
    import csv

    with open(tmp_path / "mem" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    chunks = {name: {int(r["chunk"]) for r in rows if r["checkpoint"] == name} for name in ("ckpt_001", "ckpt_002",
                                                                                             "ckpt_010")}
    assert chunks == {"ckpt_001": {0}, "ckpt_002": {0, 1}, "ckpt_010": {0, 1, 5}}
    assert sum(r["checkpoint"] == "ckpt_001" for r in rows) == 6  # chunk 0 holds 6 rows


@pytest.mark.slow
def test_eval_sweep_over_hub_revisions(k2_like_hub, tmp_path):
    """`k2hf eval sweep LLM360/K2 --every 2`: each ckpt_N revision loaded through the Hub client, evaluated once."""
    import csv

    result = _in_subprocess(_hub_env(k2_like_hub, tmp_path), (
        "from k2hf.cli import main; raise SystemExit(main(['eval', 'sweep', 'LLM360/K2', '--tasks', 'k2hf_mc', "
        f"'--every', '2', '--out', {str(tmp_path / 'sweep')!r}]))"))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["checkpoint"], r["metric"]) for r in rows] == [("ckpt_002", "acc")]  # 2nd of ckpt_001/002/010
    assert json.loads((tmp_path / "sweep" / "ckpt_002" / "results.json").read_text())["model"]["checkpoint"] == \
        "ckpt_002"
    assert any(r.startswith("GET /api/models/LLM360/K2/revision/ckpt_002") for r in k2_like_hub.requests)
