"""Doc commands do not rot: every command in the README's bash blocks is run (or, for cluster-scale launches,
its configs are loaded and checked) in a sandbox laid out like the repo."""

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from k2hf import cli


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, demo_run):
    """A working dir where the repo's folders resolve as in a checkout, and outputs/ is private to the test;
    `k2hf demo` has run (the suite's one run: later commands use what it left in outputs/demo)."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("pretrain", "finetune", "k2hf", "examples"):
        (root / name).symlink_to(REPO_ROOT / name)
    (root / "outputs").mkdir()
    (root / "outputs" / "demo").symlink_to(demo_run[0])
    return root


def test_quick_start_commands_are_the_ci_ones():
    commands = readme_commands()
    assert commands[0].endswith("&& k2hf demo") and "torch==2.13.0" in commands[0]
    assert commands[1].endswith("&& python -m pytest --durations=15") and "torch==2.13.0" in commands[1]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # .ci/run executes exactly this README block
    assert "bash .ci/oldest" in ci  # ... then the fast tier at the oldest versions pyproject allows


@pytest.mark.slow
def test_every_readme_command_runs(sandbox, monkeypatch, capsys):
    monkeypatch.chdir(sandbox)
    ran = []
    for command in readme_commands()[2:]:
        argv = shlex.split(command)
        if argv[0] == "k2hf" and any(a.startswith("LLM360/") for a in argv):
            cli.build_parser().parse_args(argv[1:])  # K2's own Hub lines: no Hub here, so they must at least parse
            ran.append("hub")
        elif argv[0] == "k2hf":
            assert cli.main(argv[1:]) == 0, command
            ran.append(argv[1])
        elif argv[:2] == ["accelerate", "launch"]:
            _check_launch(argv)
            ran.append("launch")
        elif argv[0] == "sbatch":  # the script itself runs under stand-ins for Slurm in test_slurm_script.py
            assert Path(argv[-1]).is_file() and "#SBATCH --signal=B:USR1@600" in Path(argv[-1]).read_text()
            ran.append("sbatch")
        else:
            pytest.fail(f"README command not covered by this test: {command}")
    out = capsys.readouterr().out
    assert "verified: every chunk hash and count matches the manifest" in out
    # the demo's drill deferred chunk 2: `data order` shows the order as trained, and what was planned
    assert "ckpt_003 <- chunk 3 (step 27)  [planned: chunk 2]" in out and "ckpt_004 <- chunk 2 (step 36)" in out
    assert "chunk 2 row 5 (64 tokens)" in out
    assert "packed" in out and (sandbox / "outputs" / "demo" / "pretrain" / "stage1" / "spikes.png").is_file()
    assert ran.count("launch") == 3 and ran.count("sbatch") == 1  # 65B pretraining (also on Slurm), SFT x 2
    assert {"data", "spikes", "sft", "checkpoints", "analyze", "report", "gallery", "eval", "recipes",
            "trace"} <= set(ran)
    assert "pretrain/tiny_stage1" in out and (sandbox / "my-recipes" / "tiny_stage1.yaml").is_file()
    assert "accelerate/zero3.yaml" in out
    assert ran.count("hub") == 7
    assert "ckpt_160 <- chunk 159" in out and "ckpt_360 <- chunk 186" in out
    assert (sandbox / "outputs" / "demo" / "memorization" / "scores.csv").is_file()
    # the same analysis as 2 local worker processes: the same bytes
    assert (sandbox / "outputs" / "demo" / "memorization-2w" / "scores.csv").read_bytes() == \
        (sandbox / "outputs" / "demo" / "memorization" / "scores.csv").read_bytes()
    with open(sandbox / "outputs" / "demo" / "eval-watch" / "sweep.csv") as f:  # the demo run has ended: all 4
        assert sorted({row.split(",")[0] for row in f.read().splitlines()[1:]}) == [f"ckpt_00{i}" for i in range(1, 5)]
    assert "430.8 MWh, 165.9 tCO2eq" in out and "steps kept (" in out
    assert (sandbox / "outputs" / "demo" / "gallery" / "gallery.html").is_file()
    assert (sandbox / "outputs" / "demo" / "eval" / "sweep.csv").is_file()
    # data search and trace on the demo's data: the index, a count line, the trace's and contamination's files
    assert "indexed 76 rows (4,864 tokens)" in out and "occurrence(s); first checkpoint that had seen it" in out
    trace = json.loads((sandbox / "outputs" / "demo" / "trace" / "trace.json").read_text())
    assert [t["checkpoint"] for t in trace["traces"]] == ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    contamination = json.loads((sandbox / "outputs" / "demo" / "contamination" / "contamination.json").read_text())
    assert contamination["tasks"]["k2hf_mc"]["items"] == 8


def _check_launch(argv: list[str]) -> None:
    """Cluster-scale launches cannot run here: their accelerate config, script and recipe must exist and load."""
    import yaml

    from k2hf.finetune.recipe import load_recipe
    from k2hf.pretrain.config import load_train_config

    options = dict(zip(argv[2::1], argv[3::1]))
    accelerate_config = Path(options["--config_file"])
    assert yaml.safe_load(accelerate_config.read_text())["distributed_type"] == "DEEPSPEED"
    script = next(a for a in argv if a.endswith(".py"))
    assert Path(script).is_file()
    if "--config" in argv:
        config = load_train_config(argv[argv.index("--config") + 1])
        assert config.model.preset == "k2_65b"
    else:
        assert load_recipe(argv[argv.index("--recipe") + 1]).max_length == 8192


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_python_snippets(sandbox, capsys):
    """The local snippet runs on the demo's chat model; the Hub snippet (no Hub here) compiles and names real API."""
    import k2hf

    local, hub, tools, research = _python_blocks()
    compile(research, "README.md", "exec")
    compile(tools, "README.md", "exec")  # function calling: names real API (run for real in test_function_calling)
    from k2hf import chat

    assert all(hasattr(chat, n) for n in ("generate_message", "run_tool_loop")) and hasattr(k2hf, "parse_tool_calls")
    assert "from k2hf.chat import generate_message, run_tool_loop" in tools
    assert 'k2hf.checkpoints.load("LLM360/K2", 120' in research
    from k2hf.analysis import memorization

    assert all(hasattr(memorization, n) for n in ("MemorizationConfig", "analyze_memorization"))
    assert all(hasattr(k2hf.checkpoints, n) for n in ("list", "load"))
    model_dir = sandbox / "outputs" / "demo" / "sft" / "final"
    exec(compile(local.replace('"path/to/k2-checkpoint"', repr(str(model_dir))), "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()  # it printed the decoded generation
    assert 'revision="ckpt_360"' in hub and "LLM360/K2-Chat" in hub
    compile(hub, "README.md", "exec")
    assert all(hasattr(k2hf, name) for name in ("K2ForCausalLM", "apply_chat_template_to"))


def benchmark_commands() -> list[str]:
    return re.findall(r"- Command: `([^`]+)`", (REPO_ROOT / "BENCHMARKS.md").read_text())


@pytest.mark.slow
def test_benchmark_commands_run_at_small_size():
    """BENCHMARKS.md's commands, shrunk (100 MB -> 1 MB, 20K -> 200 conversations, 256 -> 8 rows, seq 8192 -> 512,
    20 -> 2 steps): every method reports."""
    import json
    import subprocess
    import sys

    commands = benchmark_commands()
    scripts = ["bench/data_prepare.py", "bench/sft_pack.py", "bench/memorization.py", "bench/training_memory.py",
               "bench/compile_cpu.py", "bench/data_search.py"]
    assert [c.split()[1] for c in commands] == scripts
    if not (REPO_ROOT.parent / "shared" / "llama-tokenizer" / "tokenizer.model").is_file():
        commands = commands[:-1]  # infini-gram's own indexing (the comparison) tokenizes with the real LLaMA model
    shrink = {"--mb 100": "--mb 1", "--mb 1000": "--mb 2", "--queries 200": "--queries 20",
              "--conversations 20000": "--conversations 200",
              "--rows 256 --batch-size 64": "--rows 8 --batch-size 4", "--steps 20": "--steps 2 --warmup 1"}
    for command in commands:
        for full, small in shrink.items():
            command = command.replace(full, small)
        argv = shlex.split(command) + (["--seq", "512"] if "training_memory" in command else [])
        result = subprocess.run([sys.executable, *argv[1:]], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        rows = [r for r in lines if "method" in r]
        if argv[1] == "bench/training_memory.py":
            steps, ratio = lines[:3], lines[3]
            assert [r["case"] for r in steps] == ["k2_chunked_loss", "k2_plain_loss", "stock_llama"]
            assert all(r["step_peak_mb"] > 0 for r in steps) and ratio["loss_rel_diff"] <= 1e-6
            continue
        if argv[1] == "bench/data_search.py":
            prepared, index, infini_gram, queries = lines
            assert index["tokens"] == prepared["tokens"] and abs(infini_gram["tokens"] / index["tokens"] - 1) < 0.01
            assert queries["count_warm_median_ms"] > 0 and queries["scan_over_warm_count"] > 0
            continue
        if argv[1] == "bench/compile_cpu.py":
            assert [r["mode"] for r in lines[:2]] == ["eager", "compiled"] and lines[1]["tokens_per_s"] > 0
            assert lines[2]["max_loss_difference_over_run"] <= 1e-4
            continue
        assert len(rows) == {"bench/data_prepare.py": 4, "bench/sft_pack.py": 2, "bench/memorization.py": 2}[argv[1]]
        if argv[1] == "bench/memorization.py":
            assert all(r["rows_per_s"] > 0 and r["rows"] == 8 for r in rows)
            assert json.loads(result.stdout.splitlines()[-1])["token_agreement"] == 1.0
            continue
        assert all(r["tokens_per_s"] > 0 for r in rows)
        assert len({r["tokens"] for r in rows}) == 1  # every method saw the same tokens


def test_every_k2hf_name_the_readme_mentions_exists():
    """`k2hf.save_tokenizer`, `k2hf.checkpoints.list`, ...: each dotted name in the README resolves."""
    import importlib

    names = set(re.findall(r"`(k2hf(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", (REPO_ROOT / "README.md").read_text()))
    assert {"k2hf.save_tokenizer", "k2hf.encode_chat", "k2hf.checkpoints.list"} <= names
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                target = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(target, attribute), name
            target = getattr(target, attribute)
