"""Memorization score (LLM360 paper 4.3): exact scores on constructed rows, batched == one-row decoding, an
overfitted model scores its training rows higher, and a run's checkpoints only see rows they trained on."""

import csv
import json

import numpy as np
import pytest
import torch

from k2hf import cli
from k2hf.analysis.memorization import MemorizationConfig, analyze_memorization, greedy_continuations
from k2hf.analysis.run_record import RunRecord
from k2hf.modeling import K2Config, K2ForCausalLM
from k2hf.pretrain.data.import_k2 import import_k2
from k2hf.tiny import build_tiny_k2

SEQ, P, K = 80, 32, 32


def unpadded_tiny_k2(tokenizer, seed: int) -> K2ForCausalLM:
    """A tiny K2 with exactly the tokenizer's rows, so its greedy tokens are all real ids (valid data rows)."""
    torch.manual_seed(seed)
    return K2ForCausalLM(K2Config.tiny(vocab_size=len(tokenizer))).eval()


def reference_continuation(model, prompt: list[int], k: int) -> list[int]:
    """One row, no KV cache: recompute the whole sequence for every new token and take the argmax."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(k):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def import_rows(folder, out, rows_by_chunk: dict[int, list[list[int]]]):
    """Rows in K2Datasets' schema -> prepared data via the real importer (seq_len SEQ)."""
    folder.mkdir(parents=True, exist_ok=True)
    for chunk, rows in rows_by_chunk.items():
        (folder / f"chunk_{chunk}.jsonl").write_text("".join(
            json.dumps({"token_ids": [int(t) for t in r], "subset_name": "test", "src_filename": "t.jsonl",
                        "line_idx_in_src": i}) + "\n" for i, r in enumerate(rows)))
    import_k2(str(folder), out, tokenizer="sample", chunks=sorted(rows_by_chunk), seq_len=SEQ, num_chunks=4,
              progress=False)
    return out


def read_scores(path):
    with open(path) as f:
        return [{**r, "chunk": int(r["chunk"]), "row": int(r["row"]), "score": float(r["score"]),
                 "full_match": int(r["full_match"])} for r in csv.DictReader(f)]


def test_batched_decoding_equals_the_one_row_reference(tiny_tokenizer):
    model = build_tiny_k2(tiny_tokenizer, seed=3).eval()
    prompts = torch.from_numpy(np.random.default_rng(0).integers(3, len(tiny_tokenizer), (24, P)))
    expected = [reference_continuation(model, p.tolist(), K) for p in prompts]
    for batch in (1, 5, 24):
        got = torch.cat([greedy_continuations(model, prompts[i : i + batch], K) for i in range(0, 24, batch)])
        assert got.tolist() == expected, batch


@pytest.fixture(scope="module")
def scored_rows(tiny_tokenizer, tmp_path_factory):
    """Chunk 0: 6 rows that are the model's own greedy continuation; chunk 1: the same rows with k = 1, 2, 5, 8,
    16, 32 continuation tokens changed (the model's output does not change: it only sees the prompt)."""
    tmp = tmp_path_factory.mktemp("mem-exact")
    model = unpadded_tiny_k2(tiny_tokenizer, seed=5)
    model.save_pretrained(tmp / "model")
    tiny_tokenizer.save_pretrained(tmp / "model")
    rng = np.random.default_rng(1)
    vocab = len(tiny_tokenizer)
    own, changed = [], []
    for k in (1, 2, 5, 8, 16, 32):
        prompt = rng.integers(3, vocab, P).tolist()
        row = prompt + reference_continuation(model, prompt, K) + rng.integers(3, vocab, SEQ - P - K).tolist()
        own.append(row)
        edited = list(row)
        for pos in rng.choice(K, size=k, replace=False):
            edited[P + pos] = (edited[P + pos] + 1 + int(rng.integers(vocab - 4))) % (vocab - 3) + 3
            assert edited[P + pos] != row[P + pos]
        changed.append(edited)
    data = import_rows(tmp / "release", tmp / "data", {0: own, 1: changed})
    return tmp / "model", data


def test_own_continuations_score_one_and_k_changes_score_32_minus_k(scored_rows, tmp_path):
    model_dir, data = scored_rows
    summary = analyze_memorization(model_dir, tmp_path / "out", data=data, chunks=[0, 1],
                                   config=MemorizationConfig(samples=100), progress=False)
    scores = {(r["chunk"], r["row"]): (r["score"], r["full_match"]) for r in read_scores(tmp_path / "out/scores.csv")}
    assert len(scores) == 12
    for row in range(6):
        assert scores[(0, row)] == (1.0, 1)
    for row, k in enumerate((1, 2, 5, 8, 16, 32)):
        assert scores[(1, row)] == (pytest.approx((32 - k) / 32), 0)
    stats = summary["checkpoints"]["model"]
    assert stats["rows"] == 12 and stats["full_match_rate"] == 0.5
    assert stats["histogram"][32] == 6 and [stats["histogram"][32 - k] for k in (1, 2, 5, 8, 16, 32)] == [1] * 6
    assert (tmp_path / "out/score_histogram.png").stat().st_size > 10_000


def test_prompt_and_continuation_lengths_are_configurable(scored_rows, tmp_path):
    model_dir, data = scored_rows
    summary = analyze_memorization(model_dir, tmp_path / "o", data=data, chunks=[0], progress=False,
                                   config=MemorizationConfig(prompt_tokens=32, continuation_tokens=16, samples=3))
    assert summary["checkpoints"]["model"]["histogram"] == [0] * 16 + [3]  # the first 16 of its own 32 tokens


def test_overfitted_model_scores_its_training_rows_higher(tiny_tokenizer, tmp_path):
    vocab = len(tiny_tokenizer)
    rng = np.random.default_rng(7)
    seen, unseen = rng.integers(3, vocab, (16, SEQ)), rng.integers(3, vocab, (16, SEQ))
    model = build_tiny_k2(tiny_tokenizer, seed=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.from_numpy(seen)
    for _ in range(250):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "model")
    data = import_rows(tmp_path / "release", tmp_path / "data", {0: seen.tolist(), 1: unseen.tolist()})
    assert cli.main(["analyze", "memorization", "--model", str(tmp_path / "model"), "--data", str(data),
                     "--chunks", "0,1", "--samples", "32", "--out", str(tmp_path / "out")]) == 0
    rows = read_scores(tmp_path / "out/scores.csv")
    mean = {c: np.mean([r["score"] for r in rows if r["chunk"] == c]) for c in (0, 1)}
    assert mean[0] > 0.8 and mean[1] < 0.1, mean


def test_run_checkpoints_only_draw_rows_they_trained_on(drill_run, tmp_path, capsys):
    """Default: rows come only from what each checkpoint trained on (the run's log); the data dir is the run's."""
    assert cli.main(["analyze", "memorization", "--model", str(drill_run), "--chunks", "0,1,2,3", "--samples", "30",
                     "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in printed[1:5]] == [["ckpt_001", "18"], ["ckpt_002", "30"],
                                                           ["ckpt_003", "30"], ["ckpt_004", "30"]]
    record = RunRecord(drill_run)
    rows = read_scores(tmp_path / "out/scores.csv")
    for name in ("ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"):
        trained = record.trained_rows(name)
        mine = [(r["chunk"], r["row"]) for r in rows if r["checkpoint"] == name]
        assert mine and all(row in trained[chunk] for chunk, row in mine)
    assert {r["chunk"] for r in rows if r["checkpoint"] == "ckpt_003"} <= {0, 1, 3}  # chunk 2 was deferred
    # one shared permutation: a checkpoint's rows inside what an earlier one saw are a prefix of the earlier list
    drawn = {n: [(r["chunk"], r["row"]) for r in rows if r["checkpoint"] == n] for n in ("ckpt_001", "ckpt_002",
                                                                                        "ckpt_003")}
    in_chunk0 = [x for x in drawn["ckpt_002"] if x[0] == 0]
    assert in_chunk0 and in_chunk0 == drawn["ckpt_001"][: len(in_chunk0)]
    in_chunks01 = [x for x in drawn["ckpt_003"] if x[0] in (0, 1)]
    assert in_chunks01 and in_chunks01 == drawn["ckpt_002"][: len(in_chunks01)]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["correlation"]["checkpoints"] == ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    assert np.array(summary["correlation"]["pearson"], dtype=float).shape == (4, 4)
    assert (tmp_path / "out/score_correlation.png").stat().st_size > 10_000
    # untrained rows are not drawn unless asked for: a chunk nobody trained on at ckpt_001
    assert cli.main(["analyze", "memorization", "--model", str(drill_run), "--checkpoints", "1", "--chunks", "3",
                     "--out", str(tmp_path / "none")]) == 2
    assert "ckpt_001 has trained on no row of chunks [3]" in capsys.readouterr().err
