"""`k2hf data import-k2`: LLM360's released chunk files -> prepared data, bit for bit, locally and from the Hub."""

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import REPO_ROOT, train_tiny_run
from hub_server import HubServer
from k2hf import cli
from k2hf.formats.prepared_data import sha256_file
from k2hf.pretrain.data.import_k2 import ReleaseImportError, import_k2
from k2hf.pretrain.data.reader import PreparedData

SEQ = 64
SUBSETS = ("wikipedia", "starcoder", "arxiv")


def write_release(folder, vocab, rows_per_chunk, chunks=(0, 1, 5), seq=SEQ, seed=0):
    """Chunk files in K2Datasets' schema: one row per line with its subset, source shard and line in it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for chunk in chunks:
        rows = []
        for _ in range(rows_per_chunk):
            subset = SUBSETS[int(rng.integers(len(SUBSETS)))]
            rows.append({"token_ids": rng.integers(0, vocab, seq).tolist(), "source": subset, "subset_name": subset,
                         "src_filename": f"/lustre/tokenized/{subset}/part_{int(rng.integers(3)):03d}.jsonl",
                         "line_idx_in_src": int(rng.integers(0, 10_000))})
        (folder / f"chunk_{chunk}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        written[chunk] = rows
    return written


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("k2datasets")
    return folder, write_release(folder, len(tiny_tokenizer), rows_per_chunk=6)


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "k2"
    import_k2(str(release[0]), out, tokenizer="sample", chunks=[0, 1, 5], seq_len=SEQ, progress=False)
    return out


def test_ids_row_order_and_provenance_are_kept(release, imported):
    _, rows = release
    data = PreparedData(imported)
    for chunk, expected in rows.items():
        assert np.array_equal(np.asarray(data.chunk(chunk).tokens), np.array([r["token_ids"] for r in expected]))
        for i, r in enumerate(expected):
            (piece,) = data.describe_row(chunk, i)
            assert (piece["subset"], piece["source"], piece["record"], piece["position"]) == (
                r["subset_name"], r["src_filename"], r["line_idx_in_src"], [0, SEQ])
            assert piece["fim"] is None and piece["document_tokens"] is None  # not recorded by the release
    m = data.manifest
    assert m.kind == "k2_release" and m.num_chunks == 360 and m.chunks_imported == [0, 1, 5]
    assert (m.rows_read, m.rows_imported, m.rows_skipped) == (18, 18, {})
    assert sum(s.rows for s in m.subsets) == 18 and m.to_dict()["chunks"][2] == {
        "index": 2, "file": None, "pieces_file": None, "tokens": 0, "rows": 0}
    for c in (0, 1, 5):
        assert m.chunks[c].sha256 == sha256_file(imported / m.chunks[c].file)
        assert sum(m.chunks[c].subset_rows.values()) == 6
    assert data.verify() == []


def test_k2_order_verify_inspect_and_order_commands(release, imported, tmp_path, capsys):
    out = tmp_path / "order"
    import_k2(str(release[0]), out, tokenizer="sample", chunks=[5, 1], seq_len=SEQ, progress=False)
    assert PreparedData(out).chunk_order == [1, 5]
    assert cli.main(["data", "verify", str(imported)]) == 0
    capsys.readouterr()
    assert cli.main(["data", "inspect", str(imported), "--chunk", "5", "--row", "2"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    r = release[1][5][2]
    assert header == f"--- [0:{SEQ}] {r['subset_name']} {r['src_filename']} line {r['line_idx_in_src'] + 1} (pass 0)"
    assert cli.main(["data", "order", str(imported)]) == 0
    assert capsys.readouterr().out.splitlines() == ["ckpt_001 <- chunk 0", "ckpt_002 <- chunk 1", "ckpt_003 <- chunk 5"]
    # a flipped byte is found
    target = imported / "chunks" / "chunk_00001.bin"
    blob = bytearray(target.read_bytes())
    blob[10] ^= 1
    copy = tmp_path / "flipped"
    import shutil

    shutil.copytree(imported, copy)
    (copy / "chunks" / "chunk_00001.bin").write_bytes(bytes(blob))
    assert cli.main(["data", "verify", str(copy)]) == 1
    assert "FAIL chunks/chunk_00001.bin: sha256 mismatch" in capsys.readouterr().out


def test_pretraining_runs_on_imported_data(imported, tmp_path):
    run = train_tiny_run(imported, tmp_path / "run")
    log = [json.loads(line) for line in (run / "data_sequence.jsonl").read_text().splitlines()]
    assert [e["chunk"] for e in log if e.get("event") == "chunk_end"] == [0, 1, 5]
    assert [e["rows"] for e in log if "event" not in e and e["chunk"] == 5] == [[0, 2], [2, 4], [4, 6]]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_001", "ckpt_002", "ckpt_003"]


@pytest.mark.parametrize("line, reason, detail", [
    ("{not json", "malformed_json", "Expecting property name"),
    (json.dumps({"token_ids": [1] * SEQ, "subset_name": "a", "line_idx_in_src": 0}), "missing_field",
     "src_filename"),
    (json.dumps({"token_ids": [1] * (SEQ - 1), "subset_name": "a", "src_filename": "f", "line_idx_in_src": 0}),
     "wrong_length", f"{SEQ - 1} tokens, not {SEQ}"),
    (json.dumps({"token_ids": [1] * (SEQ - 1) + [10 ** 6], "subset_name": "a", "src_filename": "f",
                 "line_idx_in_src": 0}), "id_out_of_range", "1000000 is not an id"),
])
def test_malformed_rows_stop_naming_file_and_line_or_are_counted(release, tmp_path, line, reason, detail):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = (release[0] / "chunk_0.jsonl").read_text().splitlines()
    (folder / "chunk_0.jsonl").write_text("\n".join(good[:3] + [line] + good[3:]) + "\n")
    with pytest.raises(ReleaseImportError, match=f"chunk_0.jsonl line 4: {reason.replace('_', ' ')}: .*{detail}"):
        import_k2(str(folder), tmp_path / "fail", tokenizer="sample", chunks=[0], seq_len=SEQ, progress=False)
    m = import_k2(str(folder), tmp_path / "skip", tokenizer="sample", chunks=[0], seq_len=SEQ, on_error="skip",
                  progress=False)
    assert (m.rows_read, m.rows_imported, m.rows_skipped) == (7, 6, {reason: 1})
    assert np.array_equal(np.asarray(PreparedData(tmp_path / "skip").chunk(0).tokens),
                          np.array([json.loads(g)["token_ids"] for g in good]))
    assert PreparedData(tmp_path / "skip").verify() == []


def test_cli_errors_are_one_line(release, tmp_path, capsys):
    assert cli.main(["data", "import-k2", str(release[0]), "--out", str(tmp_path / "o"), "--chunks", "2",
                     "--tokenizer", "sample", "--seq-len", str(SEQ)]) == 2
    assert capsys.readouterr().err.strip() == (f"k2hf: error: chunk_2.jsonl not found in {release[0]} (released "
                                               "chunk files are named chunk_<i>.jsonl; it holds chunks 0-1,5: pick "
                                               "from them with --chunks)")
    assert cli.main(["data", "import-k2", str(release[0]), "--out", str(tmp_path / "o"), "--chunks", "0,x"]) == 2
    assert "'0,x' is not a list of chunk numbers" in capsys.readouterr().err
    assert cli.main(["data", "import-k2", str(release[0]), "--out", str(tmp_path / "o"), "--chunks", "360",
                     "--tokenizer", "sample"]) == 2
    assert "are not chunks of the release: give indices in 0..359" in capsys.readouterr().err


def test_streaming_keeps_memory_bounded(tmp_path, tiny_tokenizer):
    """Python's peak memory does not grow with the chunk: 1,100 vs 3,300 K2-sized rows (2048 tokens; 11 vs 33 MB of
    JSON) differ by less than 1 MB (hashing reads files in 4 MB blocks, which both reach)."""
    peaks = []
    for rows in (1100, 3300):
        folder = tmp_path / f"rows{rows}"
        write_release(folder, len(tiny_tokenizer), rows_per_chunk=rows, chunks=(0,), seq=2048)
        tracemalloc.start()
        import_k2(str(folder), tmp_path / f"out{rows}", tokenizer="sample", chunks=[0], progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert (tmp_path / "rows3300" / "chunk_0.jsonl").stat().st_size > 3e7
    assert peaks[1] - peaks[0] < 1e6, peaks


def test_hub_dataset_streams_through_the_real_client(release, imported, tmp_path):
    with HubServer({("dataset", "LLM360/K2Datasets"): {"main": release[0]}}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
               "PYTHONPATH": str(REPO_ROOT)}
        code = ("from k2hf.cli import main; raise SystemExit(main(['data', 'import-k2', 'LLM360/K2Datasets', "
                f"'--out', '{tmp_path / 'hub'}', '--chunks', '0,1,5', '--tokenizer', 'sample', '--seq-len', '{SEQ}']))")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "imported 18 of 18 rows x 64 tokens from 3 chunk(s) (skipped: none)" in result.stdout
        assert any(r.startswith("GET /datasets/LLM360/K2Datasets/resolve/main/chunk_5.jsonl") for r in hub.requests)
    local, hub_data = PreparedData(imported), PreparedData(tmp_path / "hub")
    for c in (0, 1, 5):
        assert hub_data.manifest.chunks[c].sha256 == local.manifest.chunks[c].sha256
        assert hub_data.manifest.chunks[c].pieces_sha256 == local.manifest.chunks[c].pieces_sha256


def test_a_folder_of_some_released_files_imports_those_and_says_which(release, imported, tmp_path, caplog):
    """No --chunks on a local folder holding chunks 0, 1 and 5 of 360: those three are imported (the same bytes as
    naming them), and the log says which; an empty folder is one line."""
    import logging

    with caplog.at_level(logging.INFO, logger="k2hf"):
        manifest = import_k2(str(release[0]), tmp_path / "k2", tokenizer="sample", seq_len=SEQ, progress=False)
    assert manifest.chunks_imported == [0, 1, 5] and manifest.num_chunks == 360
    assert "importing the 3 chunk files found in" in caplog.text and "chunks 0-1,5 (of 360" in caplog.text
    for c in (0, 1, 5):
        assert manifest.chunks[c].sha256 == PreparedData(imported).manifest.chunks[c].sha256
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "chunk_01.jsonl").write_text("")  # not a released name: chunk files are not zero-padded
    with pytest.raises(ReleaseImportError, match=r"holds no released chunk file \(chunk_<i>.jsonl, i in 0..359\)"):
        import_k2(str(tmp_path / "none"), tmp_path / "k2-none", tokenizer="sample", seq_len=SEQ, progress=False)
