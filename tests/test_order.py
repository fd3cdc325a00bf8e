"""K2's real training order, and which chunk each checkpoint saw: preset, prepared data, and what a run did."""

import pytest

from conftest import REPO_ROOT
from k2hf import cli
from k2hf.analysis.order import ChunkOrder
from k2hf.analysis.run_record import RunRecord
from k2hf.errors import UserError
from k2hf.pretrain.data.config import DataConfig
from k2hf.recipes import RecipeError
from k2hf.release import k2_chunk_order


def test_k2_preset_is_the_whole_real_order():
    # written out block by block, independently of the implementation's list surgery
    expected = ([*range(0, 16), *range(32, 38), *range(44, 52), *range(16, 32), *range(38, 44)]
                + [c for c in range(52, 360) if c not in (160, 186)] + [160, 186])
    order = k2_chunk_order()
    assert order == expected
    assert len(order) == 360 and sorted(order) == list(range(360))
    assert order[16] == 32 and order[29] == 51 and order[30] == 16  # 32-37 and 44-51 right after 0-15
    assert order[159] == 159 and order[160] == 161  # 160 left its place ...
    assert order[-2:] == [160, 186]  # ... and it and 186 came last (the two spike restarts)


def test_data_order_preset_cli_both_ways(capsys):
    assert cli.main(["data", "order", "--preset", "k2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 360 and lines[0] == "ckpt_001 <- chunk 0" and lines[16] == "ckpt_017 <- chunk 32"
    assert lines[-1] == "ckpt_360 <- chunk 186"
    assert cli.main(["data", "order", "--preset", "k2", "--chunk", "160"]) == 0
    assert capsys.readouterr().out == "ckpt_359 <- chunk 160\n"
    assert cli.main(["data", "order", "--preset", "k2", "--checkpoint", "31"]) == 0
    assert capsys.readouterr().out == "ckpt_031 <- chunk 16\n"
    for bad in ("0", "361", "-1"):
        assert cli.main(["data", "order", "--preset", "k2", "--checkpoint", bad]) == 2
        assert capsys.readouterr().err.strip() == (
            f"k2hf: error: checkpoint {bad} does not exist in preset k2: checkpoints are 1..360 (ckpt_001 is 1)")
    assert cli.main(["data", "order", "--preset", "k2", "--chunk", "360"]) == 2
    assert "no checkpoint of preset k2 finished chunk 360 (chunks finished: 0-359)" in capsys.readouterr().err
    assert cli.main(["data", "order", "--preset", "llama"]) == 2
    assert "unknown chunk-order preset 'llama'; known: ['k2']" in capsys.readouterr().err


def test_recipe_preset_and_its_errors():
    base = {"tokenizer": "sample", "subsets": [{"name": "web", "paths": ["web.jsonl"]}],
            "base_dir": str(REPO_ROOT / "k2hf/sample_data/pretrain")}
    assert DataConfig.from_dict({**base, "chunk_order": "k2"}).resolved_order() == k2_chunk_order()
    with pytest.raises(RecipeError, match="'k3' is not a preset; known: \\['k2'\\]"):
        DataConfig.from_dict({**base, "chunk_order": "k3"})
    with pytest.raises(RecipeError, match="either `defer` or a `chunk_order` preset"):
        DataConfig.from_dict({**base, "chunk_order": "k2", "defer": [160]})
    with pytest.raises(RecipeError, match="must list each of the 4 chunks exactly once"):
        DataConfig.from_dict({**base, "chunk_order": "k2", "num_chunks": 4})


def test_prepared_data_answers_the_plan(sample_data, capsys):
    assert cli.main(["data", "order", str(sample_data)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"ckpt_00{n + 1} <- chunk {n}" for n in range(4)]
    assert cli.main(["data", "order", str(sample_data), "--checkpoint", "0"]) == 2
    assert "checkpoints are 1..4" in capsys.readouterr().err


def test_run_dir_answers_what_the_run_did(drill_run, sample_data, capsys):
    """After the drill's rollback deferred chunk 2, ckpt_003 was trained on chunk 3, not the plan's chunk 2."""
    assert cli.main(["data", "order", str(drill_run)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ckpt_001 <- chunk 0 (step 9)", "ckpt_002 <- chunk 1 (step 18)",
        "ckpt_003 <- chunk 3 (step 27)  [planned: chunk 2]", "ckpt_004 <- chunk 2 (step 36)  [planned: chunk 3]"]
    assert cli.main(["data", "order", str(drill_run), "--chunk", "2"]) == 0
    assert capsys.readouterr().out == "ckpt_004 <- chunk 2 (step 36)  [planned: chunk 3]\n"
    assert cli.main(["data", "order", str(drill_run), "--checkpoint", "5"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"k2hf: error: checkpoint 5 does not exist in run {drill_run}: checkpoints are 1..4 (ckpt_001 is 1)")
    record = RunRecord(drill_run)
    assert record.data_dir == sample_data.resolve() and record.planned_order == [0, 1, 2, 3]


def test_run_record_rows_behind_every_checkpoint(drill_run):
    """The exact rows each model state saw. A step takes 2 rows (128 tokens / 64), so a chunk of 19 rows gives 9
    steps and its row 18 is never trained."""
    record = RunRecord(drill_run)
    full = list(range(18))  # 9 steps x 2 rows; row 18 never fills a step
    rows = {name: {c: r.tolist() for c, r in record.trained_rows(name).items()}
            for name in ("ckpt_002", "spike_001_step_0000022", "ckpt_003", "step_0000032", "ckpt_004")}
    assert rows["ckpt_002"] == {0: full, 1: full}
    assert rows["spike_001_step_0000022"] == {0: full, 1: full, 2: list(range(8))}  # the diverged 4 steps
    assert rows["ckpt_003"] == {0: full, 1: full, 3: full}  # the rollback took chunk 2's steps back
    assert rows["step_0000032"] == {0: full, 1: full, 3: full, 2: list(range(10))}
    assert rows["ckpt_004"] == {0: full, 1: full, 3: full, 2: full}
    with pytest.raises(UserError, match="records no checkpoint 'ckpt_009'"):
        record.trained_rows("ckpt_009")


def test_order_source_errors(tmp_path):
    with pytest.raises(UserError, match="either a source"):
        ChunkOrder.of(None, None)
    with pytest.raises(UserError, match="neither a prepared data dir"):
        ChunkOrder.of(tmp_path)
