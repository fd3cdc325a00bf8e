"""Every `k2hf` subcommand answers a user mistake (bad argument, missing or wrong file, bad value) with one line on
stderr and exit code 2, never a traceback; `--debug` shows the traceback."""

import re

import pytest

from conftest import REPO_ROOT
from k2hf import cli
from k2hf.tiny import build_tiny_k2
from k2hf.tokenizer import save_tokenizer

PROGRESS_BAR = re.compile(r"\[\d+:\d+[^\]]*\]\s*$")  # tqdm's "[00:01<00:02, 3.1it/s]" at the end


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("mistakes")
    (root / "empty").mkdir()
    build_tiny_k2(tiny_tokenizer).save_pretrained(root / "no-tokenizer")  # weights + config, no tokenizer files
    bad = root / "bad-config"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (root / "file.txt").write_text("x")
    # empty inputs: a mixture too small for one row, and an SFT source with no valid conversation
    (root / "tiny.jsonl").write_text('{"text": "only a few words"}\n')
    (root / "too-small.yaml").write_text(f"tokenizer: sample\nseq_len: 4096\nnum_chunks: 2\n"
                                         f"subsets: [{{name: web, paths: ['{root / 'tiny.jsonl'}']}}]\n")
    model = root / "chat-model"
    build_tiny_k2(tiny_tokenizer).save_pretrained(model)
    save_tokenizer(tiny_tokenizer, model)
    (root / "bad-chats.jsonl").write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n'
                                          '{"messages": []}\n')
    (root / "no-valid.yaml").write_text(f"model: {model}\noutput_dir: {root / 'sft'}\nnum_proc: 1\nsources:\n"
                                        f"  - {{name: chats, kind: messages, paths: ['{root / 'bad-chats.jsonl'}']}}\n")
    (root / "no-model.yaml").write_text("sources: []\n")
    (root / "broken.yaml").write_text("sources: [\n  - bad\n")
    return root


def _cases(root, data):
    missing = str(root / "missing")
    tiny = str(REPO_ROOT / "pretrain/configs/tiny_stage1.yaml")
    sft = str(REPO_ROOT / "finetune/recipes/tiny.yaml")
    return [
        ([], "the following arguments are required: command"),
        (["fly"], "invalid choice: 'fly'"),
        (["chat", str(root / "empty"), "--prompt", "hi"], "has no config.json: not a model checkpoint"),
        (["chat", missing, "--prompt", "hi"], "does not exist (a local path, not a Hub repo id)"),
        (["chat", str(root / "no-tokenizer"), "--prompt", "hi"], "has no tokenizer files"),
        (["chat", str(root / "bad-config")], "config.json is not readable JSON"),
        (["chat", str(root / "file.txt")], "is a file: give the checkpoint folder"),
        (["chat", str(root / "empty"), "--max-new-tokens", "many"], "invalid int value: 'many'"),
        (["export", str(root / "empty"), str(root / "out")], "has no config.json"),
        (["export", str(root / "no-tokenizer"), "--to", "gguf", str(root / "out")], "invalid choice: 'gguf'"),
        (["tokenizer", str(root / "empty"), str(root / "tok")], "no SentencePiece model at"),
        (["data", "prepare", "--config", missing, "--out", str(root / "d")], "does not exist"),
        (["data", "prepare", "--config", str(REPO_ROOT / "pretrain/configs/data/sample.yaml"), "--out",
          str(root / "d"), "--workers", "0"], "num_workers must be >= 1"),
        (["data", "prepare", "--config", str(REPO_ROOT / "pretrain/configs/data/sample.yaml"), "--out",
          str(root / "d"), "--executor", "slurm", "--dry-run"], "the slurm executor needs a partition"),
        (["data", "verify", str(root / "empty")], "has no manifest.json: not prepared data"),
        (["data", "inspect", str(data), "--chunk", "7", "--row", "0"], "chunk 7 does not exist"),
        (["data", "inspect", str(data), "--chunk", "0", "--row", "-1"], "row -1 does not exist"),
        (["data", "inspect", str(data), "--chunk", "0", "--row", "19"], "row 19 does not exist"),
        (["data", "order", str(data), "--checkpoint", "0"], "checkpoint 0 does not exist"),
        (["data", "order", str(data), "--checkpoint", "1", "--chunk", "1"], "not allowed with argument"),
        (["data", "import-k2", str(root / "empty"), "--out", str(root / "k2"), "--chunks", "0"],
         "chunk_0.jsonl not found in"),
        (["checkpoints", "list", missing], "does not exist (a local path)"),
        (["analyze", "memorization", "--model", missing, "--out", str(root / "m")], "does not exist (a local path)"),
        (["analyze", "memorization", "--model", str(root / "no-tokenizer"), "--out", str(root / "m")],
         "give --data"),
        (["spikes", "analyze", missing], "does not exist: give a pretraining run dir"),
        (["pretrain", "--config", missing], "does not exist"),
        (["pretrain", "--config", tiny, "--set", "max_steps=abc"], "`max_steps` must be an integer or null"),
        (["pretrain", "--config", tiny, "--set", "optim.schedule=cos"], "must be one of 'cosine', 'linear'"),
        (["pretrain", "--config", tiny, "--set", "max_steps"], "override 'max_steps' is not KEY=VALUE"),
        (["sft", "pack", "--recipe", sft, "--set", "max_length=abc"], "`max_length` must be an integer (got 'abc')"),
        (["sft", "train", "--recipe", missing], "does not exist"),
        (["data", "prepare", "--config", str(root / "too-small.yaml"), "--out", str(root / "small")],
         "the mixture yields no row of 4096 tokens (web"),
        (["pretrain", "--config", tiny, "--set", f"data={data}", f"output_dir={root / 'run'}",
          "global_batch_tokens=2048", "log.tensorboard=false"],
         "this run has 0 planned steps: a step takes 32 rows and the chunks hold 19..19 rows"),
        (["sft", "train", "--recipe", str(root / "no-valid.yaml"), "--set", "max_length=100000"],
         "max_length 100000 exceeds the model's max_position_embeddings"),
        (["sft", "pack", "--recipe", str(root / "no-valid.yaml")],
         "the SFT mixture has no conversation to train on (chats: 2 read, rejected"),
        (["checkpoints", "list", "runs/stage1"], "the Hub is offline here (HF_HUB_OFFLINE=1)"),
        (["chat", "LLM360/K2-Chat", "--prompt", "hi"], "a local path? it does not exist here"),
        (["sft", "pack", "--recipe", str(root / "no-model.yaml")], "SFT recipe needs `model`"),
        (["sft", "pack", "--recipe", str(root / "broken.yaml")], "is not valid YAML (expected the node content"),
        (["pretrain", "--config", str(root / "broken.yaml")], "broken.yaml is not valid YAML (expected the node "
                                                              "content, but found '-' at line 2, column 3)"),
        (["eval", str(root / "chat-model"), "--tasks", "k2hf_mc"], "invalid choice: "),  # `eval run MODEL` now
        (["data", "import-k2", str(root / "empty"), "--out", str(root / "k2"), "--chunks", "3-a"],
         "argument --chunks: '3-a' is not a list of chunk numbers such as 3,4,10-12"),
        (["recipes", "copy", "pretrain/nope", str(root / "r")], "no bundled recipe 'pretrain/nope'"),
        (["recipes", "copy", "data/sample", str(root / "file.txt")], "file.txt is a file: give a folder"),
        (["spikes", "analyze", str(REPO_ROOT / "tests/fixtures/run_v1"), "--window", "2", "--out",
          str(root / "s.png")], "window"),
    ]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    return code, capsys.readouterr().err.strip()


def test_every_subcommand_answers_mistakes_in_one_line(places, sample_data, capsys):
    """Progress bars of the stages that did run may stand before the message (they are terminal UI, drawn with
    carriage returns); besides them stderr holds exactly one line."""
    for argv, expected in _cases(places, sample_data):
        code, err = _run(argv, capsys)
        assert code == 2, (argv, code, err)
        lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
        assert "Traceback" not in err and len(lines) == 1, (argv, err)
        assert lines[0].startswith("k2hf") and expected in lines[0], (argv, err)


def test_unreachable_hub_is_one_line(tmp_path):
    """No network (here: a closed port on this machine as the endpoint): a Hub id, or a path taken for one."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "2"}
    result = subprocess.run([sys.executable, "-m", "k2hf.cli", "checkpoints", "list", "runs/stage1"], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("k2hf: error: cannot reach the Hub (ConnectError")


def test_debug_shows_the_traceback(places, monkeypatch):
    from k2hf.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="has no config.json"):
        cli.main(["--debug", "chat", str(places / "empty"), "--prompt", "hi"])
    monkeypatch.setenv("K2HF_DEBUG", "1")
    with pytest.raises(CheckpointError, match="has no config.json"):
        cli.main(["chat", str(places / "empty"), "--prompt", "hi"])


def test_internal_bugs_keep_their_traceback(monkeypatch):
    """Only user errors become one line: anything else (a bug) propagates with its traceback."""
    import k2hf.analysis.order

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(k2hf.analysis.order.ChunkOrder, "of", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["data", "order", "--preset", "k2"])


@pytest.mark.parametrize("script, flag", [("pretrain/train.py", "--config"), ("finetune/sft.py", "--recipe")])
def test_accelerate_launch_scripts_are_wired_to_their_entry_points(script, flag, capsys, monkeypatch):
    """The scripts `accelerate launch` runs (slow tier: real multi-process runs) parse their arguments here."""
    import runpy

    monkeypatch.setattr("sys.argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
    assert exit_.value.code == 0 and flag in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", [script])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
    assert exit_.value.code == 2 and f"the following arguments are required: {flag}" in capsys.readouterr().err
