"""lm-evaluation-harness on K2 checkpoints: the harness's accuracy and perplexity on k2hf's offline tasks equal the
same quantities computed directly from the model; sweeps over a run's checkpoints are resumable."""

import csv
import json
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO_ROOT
from k2hf import cli
from k2hf.analysis.gallery import choice_logliks

EVAL_DATA = REPO_ROOT / "k2hf" / "sample_data" / "eval"


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_harness_numbers_equal_direct_computation(drill_run, tmp_path, capsys):
    model_dir = drill_run / "checkpoints" / "ckpt_004"
    assert cli.main(["eval", "run", str(model_dir), "--tasks", "k2hf_mc,k2hf_text", "--out", str(tmp_path / "ev")]) == 0
    record = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert record["model"]["source"] == str(model_dir) and record["versions"]["lm_eval"]
    results = record["results"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    # multiple choice: the harness scores " " + choice after the question (its target delimiter), acc = argmax
    items = _jsonl(EVAL_DATA / "mc.jsonl")
    correct = [max(range(len(i["choices"])), key=choice_logliks(model, tokenizer, i["question"],
                                                                [" " + c for c in i["choices"]]).__getitem__)
               == i["answer"] for i in items]
    assert results["k2hf_mc"]["acc,none"] == pytest.approx(sum(correct) / len(items))
    # perplexity: every token of each text, the first one predicted from the harness's prefix token
    from lm_eval.models.huggingface import HFLM

    prefix = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu").prefix_token_id
    total, words, nbytes = 0.0, 0, 0
    for doc in _jsonl(EVAL_DATA / "text.jsonl"):
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        x = torch.tensor([[prefix] + ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
        total += float(logprobs.gather(1, x[0, 1:, None]).sum())
        words += len(re.split(r"\s+", doc["text"]))
        nbytes += len(doc["text"].encode("utf-8"))
    assert results["k2hf_text"]["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert results["k2hf_text"]["bits_per_byte,none"] == pytest.approx(-total / nbytes / math.log(2), rel=1e-4)
    assert "k2hf_mc: acc" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_is_resumable_and_plots(drill_run, tmp_path, capsys):
    args = ["eval", "sweep", str(drill_run), "--tasks", "k2hf_mc", "--every", "2", "--out", str(tmp_path / "sw")]
    assert cli.main(args) == 0
    with open(tmp_path / "sw" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["checkpoint"], r["step"], r["tokens_seen"], r["task"], r["metric"]) for r in rows] == [
        ("ckpt_002", "18", str(18 * 128), "k2hf_mc", "acc"), ("ckpt_004", "36", str(36 * 128), "k2hf_mc", "acc")]
    assert all(0 <= float(r["value"]) <= 1 and float(r["stderr"]) > 0 for r in rows)
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 10_000
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "sw").glob("*/results.json")}
    assert cli.main(args) == 0  # a re-run skips finished checkpoints
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "sw").glob("*/results.json")} == stamps
    assert cli.main(["eval", "run", str(drill_run / "checkpoints" / "ckpt_001"), "--tasks", "no_such_task", "--out",
                     str(tmp_path / "x")]) == 2
    assert "unknown tasks ['no_such_task']" in capsys.readouterr().err


@pytest.mark.slow
def test_include_path_adds_the_users_own_tasks(drill_run, tmp_path):
    """A task YAML of the user's own (here: a two-item multiple-choice set) runs beside k2hf's, as with the
    harness's own `--include_path`."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "items.jsonl").write_text(
        '{"q": "Bees make", "options": ["honey", "rocks"], "gold": 0}\n'
        '{"q": "Ice is", "options": ["hot", "cold"], "gold": 1}\n')
    (tmp_path / "tasks" / "my_task.yaml").write_text(
        "task: my_task\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\n"
        "doc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    assert cli.main(["eval", "run", str(drill_run / "checkpoints" / "ckpt_004"), "--tasks", "my_task,k2hf_mc",
                     "--include-path", str(tmp_path / "tasks"), "--limit", "2", "--out", str(tmp_path / "ev")]) == 0
    record = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(record["results"]) == {"my_task", "k2hf_mc"} and record["limit"] == 2
    assert record["n_samples"]["my_task"]["effective"] == 2
