"""`bench/gpu.py --smoke`: every GPU benchmark case runs at tiny size on CPU, so the benchmark cannot rot."""

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_case(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--out", str(out)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"] == "cpu"
    rows = report["results"]
    assert not [r for r in rows if "error" in r]
    compared = {r["case"]: r for r in rows if r.get("compare") == "k2/stock"}
    assert sorted(compared) == sorted([
        "train_seq64_mb2", "train_seq64_mb2_compile", "packed128_4docs_sdpa_mb2",
        "packed128_4docs_flex_attention_mb2", "layer_h128_seq64", "layer_h128_seq128", "generate_dynamic_bs1",
        "generate_static_bs1"])
    assert all(r["numerics_ok"] and r["speed_ratio"] > 0 for r in compared.values())
    measured = [r for r in rows if r.get("model") in ("k2", "stock")]
    assert len(measured) == 16 and all((r.get("tokens_per_s") or r.get("tflops")) for r in measured)
    assert "| train_seq64_mb2 |" in result.stdout  # the table
