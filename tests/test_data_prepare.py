"""Pretraining data: exact tokens, evenness, repeats, FIM, determinism, bad input, O(1) reads, verify, resume."""

import dataclasses
import json
import os
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT
from k2hf import cli
from k2hf.pretrain.data.config import DataConfig, load_data_config
from k2hf.pretrain.data.fim import PSM, SPM
from k2hf.pretrain.data.prepare import prepare
from k2hf.pretrain.data.reader import PreparedData
from k2hf.recipes import RecipeError

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
         "quietly", "judge", "boxing", "matches", "at", "noon"]


def _docs(n, seed, code=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 60))))
        out.append(f"def f{i}(x):\n    return x + {i}  # {words}\n" if code else f"Doc {i}: {words}.")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer):
    """Local corpora in the shapes K2 used (JSONL text, Parquet code, plain text) and a saved tokenizer."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "web").mkdir()
    texts = {"web": _docs(60, 1), "wiki": _docs(25, 2), "code": _docs(40, 3, code=True), "notes": ["a note\n"] * 3}
    for part in range(2):
        with open(root / "web" / f"part{part}.jsonl", "w") as f:
            for t in texts["web"][part * 30 : (part + 1) * 30]:
                f.write(json.dumps({"text": t, "meta": {"url": "x"}}) + "\n")
    with open(root / "wiki.jsonl", "w") as f:
        for i, t in enumerate(texts["wiki"]):
            f.write(json.dumps({"id": i, "body": t}) + "\n")
    pq.write_table(pa.table({"content": texts["code"], "lang": ["python"] * 40}), root / "code.parquet")
    for i, t in enumerate(texts["notes"]):
        (root / f"note{i}.txt").write_text(t)
    tiny_tokenizer.save_pretrained(root / "tokenizer")
    return root, texts


def _config(root, **overrides):
    raw = {
        "tokenizer": str(root / "tokenizer"),
        "seq_len": 32,
        "num_chunks": 5,
        "seed": 7,
        "num_workers": 2,
        "base_dir": str(root),
        "fim": {"rate": 0.5, "spm_rate": 0.5},
        "subsets": [
            {"name": "web", "paths": ["web/*.jsonl"], "repeat": 1},
            {"name": "wiki", "paths": ["wiki.jsonl"], "text_field": "body", "repeat": 3},
            {"name": "code", "paths": ["code.parquet"], "text_field": "content", "repeat": 1.5, "fim": True},
            {"name": "notes", "paths": ["note*.txt"], "repeat": 0.5},
        ],
    }
    raw.update(overrides)
    return DataConfig.from_dict(raw)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare(_config(root), out, progress=False)
    return PreparedData(out), manifest


def _all_pieces(data):
    for c in range(data.num_chunks):
        chunk = data.chunk(c)
        for r in range(len(chunk)):
            row = chunk.row(r)
            for p in chunk.pieces_of(r):
                yield c, r, row, p


def _source_texts(manifest, texts):
    """subset index -> source index -> list of document texts (record order)."""
    out = {}
    for s_index, subset in enumerate(manifest.subsets):
        name = subset.name
        if name == "web":
            out[s_index] = {0: texts["web"][:30], 1: texts["web"][30:]}
        elif name == "notes":
            out[s_index] = {i: [t] for i, t in enumerate(texts["notes"])}
        else:
            out[s_index] = {0: texts[name]}
    return out


def test_rows_are_exact_k2_tokenization_no_bos_one_eos(prepared, corpus, tiny_tokenizer):
    """Every plain piece is exactly the SentencePiece-exact ids of its document + eos at its end, no BOS."""
    data, manifest = prepared
    _, texts = corpus
    sources = _source_texts(manifest, texts)
    eos, bos = tiny_tokenizer.eos_token_id, tiny_tokenizer.bos_token_id
    checked = 0
    for _, _, row, p in _all_pieces(data):
        assert bos not in row.tolist()
        if p["fim"]:
            continue
        text = sources[p["subset"]][p["source"]][p["record"]]
        expected = tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        a, n, o = int(p["pos"]), int(p["length"]), int(p["offset"])
        assert row[a : a + n].tolist() == expected[o : o + n]
        checked += 1
    assert checked > 100
    assert data.seq_len == 32
    for info in manifest.chunks:
        size = (data.path / info.file).stat().st_size
        assert size == info.rows * 32 * data.dtype.itemsize


def test_every_subset_spread_evenly_over_chunks(prepared):
    _, manifest = prepared
    chunks = manifest.chunks
    for subset in manifest.subsets:
        counts = [c.subset_rows[subset.name] for c in chunks]
        assert sum(counts) == subset.rows
        assert max(counts) - min(counts) <= 1, (subset.name, counts)
    totals = [c.rows for c in chunks]
    assert max(totals) - min(totals) <= 1 and sum(totals) == manifest.total_rows


def test_repeat_factors_integer_and_fractional(prepared):
    data, manifest = prepared
    copies = defaultdict(Counter)  # subset -> (source, record) -> number of instances seen starting
    for _, _, _, p in _all_pieces(data):
        if p["offset"] == 0:
            copies[manifest.subsets[p["subset"]].name][(int(p["source"]), int(p["record"]))] += 1
    assert set(copies["wiki"].values()) == {3}  # x3: every document three times (tail aside)
    assert len(copies["wiki"]) == 25
    code = Counter(copies["code"].values())
    assert set(code) <= {1, 2} and code[2] > 5 and code[1] > 5  # x1.5: all once, a deterministic part twice
    notes = manifest.subsets[3]
    assert notes.documents_packed + sum(notes.documents_skipped.values()) == 3
    assert 1 <= notes.documents_skipped["not_sampled"] <= 2  # x0.5 of 3 one-file documents
    assert notes.documents_packed == len(copies["notes"])


def test_fim_rows_are_well_formed(prepared, corpus, tiny_tokenizer):
    data, manifest = prepared
    _, texts = corpus
    prefix, middle, suffix = tiny_tokenizer.convert_tokens_to_ids(["<fim_prefix>", "<fim_middle>", "<fim_suffix>"])
    eos = tiny_tokenizer.eos_token_id
    # reassemble whole FIM documents from their pieces (a document may span rows and chunks)
    documents = defaultdict(dict)
    for _, _, row, p in _all_pieces(data):
        if p["fim"]:
            key = (int(p["record"]), int(p["pass"]), int(p["fim"]))
            documents[key][int(p["offset"])] = row[p["pos"] : p["pos"] + p["length"]].tolist()
    modes = Counter()
    for (record, _, mode), parts in documents.items():
        ids = [t for offset in sorted(parts) for t in parts[offset]]
        if sorted(parts)[0] != 0 or ids[-1] != eos:
            continue  # the subset's dropped tail cut this one
        modes[mode] += 1
        body = ids[:-1]
        assert body.count(prefix) == body.count(middle) == body.count(suffix) == 1 and eos not in body
        if mode == PSM:
            assert body[0] == prefix and body.index(prefix) < body.index(suffix) < body.index(middle)
            p_ids, s_ids, m_ids = (body[1 : body.index(suffix)], body[body.index(suffix) + 1 : body.index(middle)],
                                   body[body.index(middle) + 1 :])
        else:
            assert body[:2] == [prefix, suffix] and mode == SPM
            s_ids = body[2 : body.index(middle)]
            rest = body[body.index(middle) + 1 :]
            p_ids, m_ids = rest, []  # SPM: prefix and middle are contiguous after <fim_middle>
        decoded = "".join(tiny_tokenizer.decode(x) for x in (p_ids, m_ids, s_ids))
        assert decoded.replace(" ", "") == texts["code"][record].replace(" ", "")
    assert modes[PSM] > 3 and modes[SPM] > 3
    code = manifest.subsets[2]
    assert 0.3 < code.fim_instances / code.instances_packed < 0.7  # rate 0.5


def test_same_config_and_seed_give_byte_identical_output(corpus, prepared, tmp_path):
    root, _ = corpus
    data, _ = prepared
    prepare(_config(root), tmp_path, progress=False)
    first = sorted(p.relative_to(data.path) for p in data.path.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second and len(first) > 10
    for rel in first:
        assert (data.path / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_sentencepiece_engine_gives_identical_chunks(corpus, prepared, tiny_tokenizer, tmp_path):
    """With tokenizer.model beside tokenizer.json, workers encode with SentencePiece: same bytes as `tokenizers`."""
    from k2hf.tokenizer import save_tokenizer

    root, _ = corpus
    data, manifest = prepared
    assert not (data.path / "tokenizer" / "tokenizer.model").exists()  # the fixture's tokenizer: `tokenizers` engine
    save_tokenizer(tiny_tokenizer, tmp_path / "tokenizer")
    sp_manifest = prepare(_config(root, tokenizer=str(tmp_path / "tokenizer")), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.model").is_file()  # carried on to training and checkpoints
    assert [c.sha256 for c in sp_manifest.chunks] == [c.sha256 for c in manifest.chunks]
    assert sp_manifest.tokenizer.sha256 == manifest.tokenizer.sha256


def test_other_seed_changes_order_not_content(corpus, prepared, tmp_path):
    root, _ = corpus
    data, manifest = prepared
    other = prepare(_config(root, seed=8), tmp_path, progress=False)
    packed = [s.documents_packed for s in manifest.subsets]
    assert [s.documents_packed for s in other.subsets][:2] == packed[:2]
    assert (tmp_path / "chunks/chunk_00000.bin").read_bytes() != (data.path / "chunks/chunk_00000.bin").read_bytes()


def _bad_corpus(root: Path) -> Path:
    bad = root / "bad"
    bad.mkdir()
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b"{not json",
        json.dumps({"title": "no text field"}).encode(),
        b'{"text": "caf\xe9 latin-1"}',
        json.dumps({"text": "   "}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps({"text": "good two"}).encode(),
    ]
    (bad / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    os.symlink(bad / "missing.jsonl", bad / "b.jsonl")  # unreadable: a dangling link
    return bad


def test_bad_input_fails_by_default_naming_file_and_line(corpus, tmp_path):
    root, _ = corpus
    bad = _bad_corpus(tmp_path)
    # one worker: files fail in order (with several, the first file to fail in time is the one reported)
    config = _config(root, subsets=[{"name": "bad", "paths": [str(bad / "*.jsonl")]}], num_workers=1)
    with pytest.raises(ValueError, match=r"a\.jsonl line 2: malformed json"):
        prepare(config, tmp_path / "out", progress=False)


def test_bad_input_skipped_counted_and_reconciled(corpus, tmp_path):
    root, _ = corpus
    bad = _bad_corpus(tmp_path)
    config = _config(root, on_error="skip", subsets=[{"name": "bad", "paths": [str(bad / "*.jsonl")]}], seq_len=4,
                     num_chunks=1)
    manifest = prepare(config, tmp_path / "out", progress=False)
    subset = manifest.subsets[0]
    skipped = subset.documents_skipped
    assert skipped.get("malformed_json") == 1 and skipped.get("non_utf8") == 1
    assert skipped.get("missing_text_field") == 2 and skipped.get("empty_document") == 1
    assert skipped.get("unreadable_file") == 1
    assert subset.documents_read == 8  # 7 lines + 1 unreadable file
    assert subset.documents_packed + sum(skipped.values()) == subset.documents_read
    assert PreparedData(tmp_path / "out").verify() == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"seq_len": 1}, "seq_len must be an integer >= 2"),
        ({"num_chunks": 0}, "num_chunks must be an integer >= 1"),
        ({"subsets": [{"name": "w", "paths": ["nowhere/*.jsonl"]}]}, "matches no file"),
        ({"subsets": [{"name": "w", "paths": ["wiki.jsonl"], "repeat": -1}]}, "repeat must be a number >= 0"),
        ({"defer": [9]}, "chunk_order/defer must list each"),
        ({"subsets": [{"name": "w", "paths": ["wiki.jsonl"], "colour": 1}]}, "unknown keys"),
    ],
)
def test_config_errors_fail_before_any_work(corpus, tmp_path, overrides, message):
    root, _ = corpus
    with pytest.raises(RecipeError, match=message):
        prepare(_config(root, **overrides), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_row_reads_are_constant_time_memory_mapped(prepared):
    data, _ = prepared
    chunk = data.chunk(3)
    assert isinstance(chunk.tokens, np.memmap)
    i = len(chunk) - 1
    with open(data.path / data.manifest.chunks[3].file, "rb") as f:
        f.seek(i * data.seq_len * data.dtype.itemsize)
        raw = np.frombuffer(f.read(data.seq_len * data.dtype.itemsize), dtype=data.dtype)
    tracemalloc.start()
    row = chunk.row(i)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert row.tolist() == raw.tolist()
    assert peak < 4 * data.seq_len * 8 + 4096  # one row's worth, not the chunk


def test_verify_catches_a_flipped_byte(prepared, tmp_path, capsys):
    import shutil

    data, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(data.path, copy)
    assert PreparedData(copy).verify() == []
    target = copy / "chunks" / "chunk_00002.bin"
    blob = bytearray(target.read_bytes())
    blob[17] ^= 0x01
    target.write_bytes(bytes(blob))
    problems = PreparedData(copy).verify()
    assert problems == ["chunks/chunk_00002.bin: sha256 mismatch"]
    assert cli.main(["data", "verify", str(copy)]) == 1
    assert "FAIL chunks/chunk_00002.bin: sha256 mismatch" in capsys.readouterr().out


def test_chunk_order_defer_and_order_command(corpus, tmp_path, capsys):
    root, _ = corpus
    prepare(_config(root, defer=[1]), tmp_path, progress=False)
    data = PreparedData(tmp_path)
    assert data.chunk_order == [0, 2, 3, 4, 1]
    assert data.chunk_for_checkpoint(5) == 1
    assert cli.main(["data", "order", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"ckpt_{n:03d} <- chunk {c}" for n, c in enumerate([0, 2, 3, 4, 1], start=1)]


def test_inspect_shows_provenance(prepared, capsys):
    data, _ = prepared
    assert cli.main(["data", "inspect", str(data.path), "--chunk", "0", "--row", "0"]) == 0
    out = capsys.readouterr().out
    pieces = data.describe_row(0, 0)
    assert out.startswith("chunk 0 row 0 (32 tokens)")
    for piece in pieces:
        assert f"{piece['subset']} {piece['source']} line {piece['record'] + 1} (" in out  # 1-based, as in errors
    assert sum(p["position"][1] - p["position"][0] for p in pieces) == 32


def test_hub_streaming_path_matches_local_files(corpus, tmp_path):
    """A `hub:` subset goes through `datasets.load_dataset(..., streaming=True)`; here the `json` builder."""
    root, _ = corpus
    local = prepare(_config(root, subsets=[{"name": "wiki", "paths": ["wiki.jsonl"], "text_field": "body"}]),
                    tmp_path / "local", progress=False)
    hub = prepare(_config(root, subsets=[{"name": "wiki", "text_field": "body",
                                         "hub": {"path": "json", "data_files": str(root / "wiki.jsonl")}}]),
                  tmp_path / "hub", progress=False)
    assert [c.sha256 for c in local.chunks] == [c.sha256 for c in hub.chunks]
    assert hub.subsets[0].sources == ["hub:json"]


def test_interrupted_run_keeps_finished_shards(corpus, prepared, tmp_path):
    """Shards finished before an interruption are reused; only missing ones are rebuilt; output is unchanged."""
    root, _ = corpus
    data, _ = prepared
    prepare(_config(root), tmp_path, keep_work=True, progress=False)
    shards = sorted((tmp_path / ".work" / "shards").iterdir())
    assert len(shards) == 7  # web 2 files, wiki 1, code 1, notes 3
    import shutil

    # as if the run died while tokenizing this shard: its task (one per source) and every later stage unfinished
    shutil.rmtree(shards[3])
    (tmp_path / "manifest.json").unlink()
    (run,) = (tmp_path / ".work").glob("run-*")
    (run / "logs" / "tokenize-t7" / "completions" / "00003").unlink()
    for later in ("plan.json", "written", *(p.name for p in (run / "logs").glob("[pwm]*"))):
        target = run / later if later in ("plan.json", "written") else run / "logs" / later
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    before = {p.name: (p / "meta.json").stat().st_mtime_ns for p in shards if p.exists()}
    prepare(_config(root), tmp_path, keep_work=True, progress=False)
    after = {p.name: (p / "meta.json").stat().st_mtime_ns for p in shards if p.name in before}
    assert after == before and (shards[3] / "meta.json").is_file()
    for info in data.manifest.chunks:
        assert (tmp_path / info.file).read_bytes() == (data.path / info.file).read_bytes()


def test_reprepare_leaves_nothing_unlisted_and_verify_finds_strays(tmp_path):
    """8 chunks, then 4 into the same folder: chunks 4-7 of the first run are removed, not left to be mistaken
    for data; a file the manifest does not list fails `verify`."""
    recipe = REPO_ROOT / "pretrain/configs/data/sample.yaml"
    prepare(load_data_config(recipe, num_chunks=8), tmp_path / "d", progress=False)
    assert len(list((tmp_path / "d" / "chunks").glob("*.bin"))) == 8
    prepare(load_data_config(recipe, num_chunks=4), tmp_path / "d", progress=False)
    assert sorted(p.name for p in (tmp_path / "d" / "chunks").iterdir()) == [
        f"chunk_{i:05d}.{ext}" for i in range(4) for ext in ("bin", "pieces.npy")]
    data = PreparedData(tmp_path / "d")
    assert data.verify() == []
    (tmp_path / "d" / "chunks" / "chunk_00009.bin").write_bytes(b"old")
    assert data.verify() == ["chunks/chunk_00009.bin: not listed in the manifest (left by another preparation? "
                             "remove it)"]


@pytest.mark.parametrize("seed", range(6))
def test_manifest_counts_equal_what_the_chunks_hold(tmp_path, seed):
    """Per subset, instances and FIM instances in the manifest are exactly the documents whose first piece is in
    some chunk (those dropped with the incomplete final row are not counted)."""
    out = tmp_path / "d"
    manifest = prepare(load_data_config(REPO_ROOT / "pretrain/configs/data/sample.yaml", seed=seed), out,
                       progress=False)
    data = PreparedData(out)
    pieces = np.concatenate([np.asarray(data.chunk(c).pieces) for c in range(data.num_chunks)])
    starts = pieces[pieces["offset"] == 0]
    for index, subset in enumerate(manifest.subsets):
        mine = starts[starts["subset"] == index]
        assert subset.instances_packed == len(mine), subset.name
        assert subset.fim_instances == int((mine["fim"] != 0).sum()), subset.name


def _tree_hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.relative_to(root).as_posix().startswith(".work")}


def test_same_bytes_whatever_the_tasks_and_workers(corpus, prepared, tmp_path):
    """The datatrove local executor with 1 task, 3 tasks per stage, and 2 workers: every file identical (and
    identical to the fixture's run with the default one task per source / chunk)."""
    root, _ = corpus
    data, _ = prepared
    reference = _tree_hashes(data.path)
    assert {f"chunks/chunk_0000{c}.{e}" for c in range(5) for e in ("bin", "pieces.npy")} | {"manifest.json"} \
        <= set(reference)
    for name, tasks, workers in (("one", 1, 1), ("three", 3, 1), ("two-workers", None, 2)):
        prepare(_config(root), tmp_path / name, progress=False, tasks=tasks, workers=workers)
        assert _tree_hashes(tmp_path / name) == reference, name


def test_finished_tasks_are_not_redone(corpus, tmp_path):
    """A rerun skips every finished task (datatrove's completion records); after a chunk task dies, only its
    chunks are written again, to the same bytes."""
    root, _ = corpus
    out = tmp_path / "d"
    prepare(_config(root), out, keep_work=True, progress=False, tasks=3)
    first = _tree_hashes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")  # the tokenizer is saved afresh: set-up, not a task
              if p.is_file() and "/logs/" not in str(p) and "tokenizer/" not in str(p.relative_to(out))}
    prepare(_config(root), out, keep_work=True, progress=False, tasks=3)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    (run,) = (out / ".work").glob("run-*")
    # write task 1 of 3 (chunks 1 and 4) "died": no completion, no results; the manifest never came
    (run / "logs" / "write-t3" / "completions" / "00001").unlink()
    for chunk in (1, 4):
        (run / "written" / f"chunk_{chunk:05d}.json").unlink()
        (out / "chunks" / f"chunk_{chunk:05d}.bin").unlink()
    (run / "logs" / "manifest-t1" / "completions" / "00000").unlink()
    (out / "manifest.json").unlink()
    prepare(_config(root), out, keep_work=True, progress=False, tasks=3)
    rewritten = {p.name for p in mtimes if p.stat().st_mtime_ns != mtimes[p]}
    expected = {f"chunk_0000{c}.{e}" for c in (1, 4) for e in ("bin", "pieces.npy", "json")}
    assert rewritten == expected | {"manifest.json"}
    assert _tree_hashes(out) == first


def test_slurm_dry_run_writes_the_sbatch_scripts(corpus, tmp_path, capsys):
    """`--executor slurm --dry-run`: one array job per stage with the recipe's Slurm settings, flags on top;
    nothing submitted, no data written."""
    root, _ = corpus
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump({**_config(root).to_dict(), "slurm": {"time": "02:00:00", "cpus_per_task": 4,
                                                                           "env_command": "source venv/bin/activate"}}))
    out = tmp_path / "d"
    code = cli.main(["data", "prepare", "--config", str(recipe), "--out", str(out), "--executor", "slurm",
                     "--slurm-partition", "cpu", "--slurm-job-name", "k2data", "--tasks", "3", "--workers", "2",
                     "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and "dry run: nothing submitted" in printed
    scripts = {p.stem: p.read_text() for p in (out / ".work").glob("run-*/slurm/*.slurm")}
    assert sorted(scripts) == ["manifest", "plan", "tokenize", "write"]
    for stage, script in scripts.items():
        assert script in printed
        assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=02:00:00" in script
        assert "#SBATCH --cpus-per-task=4" in script and f"#SBATCH --job-name=k2data-{stage}" in script
        assert "source venv/bin/activate" in script and "launch_pickled_pipeline" in script
    assert "#SBATCH --array=0-2%2" in scripts["tokenize"] and "#SBATCH --array=0-0" in scripts["plan"]
    assert not (out / "manifest.json").exists() and not (out / "chunks").exists()


def test_executor_mistakes_are_one_line(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(Exception, match="the slurm executor needs a partition"):
        prepare(_config(root), tmp_path / "a", executor="slurm", dry_run=True, progress=False)
    with pytest.raises(Exception, match="--dry-run is for the slurm executor"):
        prepare(_config(root), tmp_path / "b", dry_run=True, progress=False)
    with pytest.raises(Exception, match=r"unknown slurm settings \['partitoin'\]"):
        prepare(DataConfig.from_dict({**_config(root).to_dict(), "slurm": {"partitoin": "x"}}), tmp_path / "c",
                executor="slurm", progress=False)


@pytest.mark.slow
def test_ray_executor_gives_the_same_bytes(corpus, prepared, tmp_path):
    """On a local Ray instance (skipped only where `ray` is not installed: `pip install 'k2hf[ray]'`)."""
    pytest.importorskip("ray")
    root, _ = corpus
    data, _ = prepared
    try:
        prepare(_config(root), tmp_path / "ray", progress=False, executor="ray", tasks=3, workers=2)
    finally:
        import ray

        ray.shutdown()
    assert _tree_hashes(tmp_path / "ray") == _tree_hashes(data.path)


def test_sources_by_fsspec_url_give_the_same_rows(corpus, prepared, tmp_path):
    """Sources named by fsspec URL (fsspec's in-memory filesystem and file:// here; s3://, gs://, hf:// take the
    same path through fsspec) give the same chunks as local paths, globs included."""
    import fsspec

    root, _ = corpus
    data, _ = prepared
    memory = fsspec.filesystem("memory")
    for path in sorted(root.rglob("*")):
        if path.is_file() and "tokenizer" not in path.parts:
            memory.pipe(f"/k2hf-corpus/{path.relative_to(root).as_posix()}", path.read_bytes())
    local = _config(root).to_dict()
    subsets = [{**s, "paths": [f"memory://k2hf-corpus/{p}" if s["name"] != "wiki" else f"file://{root / p}"
                               for p in s["paths"]]} for s in local["subsets"]]
    manifest = prepare(DataConfig.from_dict({**local, "subsets": subsets}), tmp_path / "url", progress=False)
    assert manifest.subsets[0].sources == ["memory:///k2hf-corpus/web/part0.jsonl",
                                                 "memory:///k2hf-corpus/web/part1.jsonl"]
    for ours, reference in zip(manifest.chunks, data.manifest.chunks):
        assert (ours.sha256, ours.pieces_sha256) == (reference.sha256, reference.pieces_sha256)
    for ours, reference in zip(manifest.subsets, data.manifest.subsets):
        assert dataclasses.replace(ours, sources=[]) == dataclasses.replace(reference, sources=[])


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_output_to_an_fsspec_url_gives_the_same_bytes(corpus, prepared, tmp_path, scheme, monkeypatch):
    """OUT as an fsspec URL: files are staged under the work dir and moved to OUT as each task ends, the
    manifest last; the result is the local run's bytes. (memory:// lives in one process: one worker there.)"""
    import fsspec

    root, _ = corpus
    data, _ = prepared
    monkeypatch.chdir(tmp_path)  # the default work dir for a URL output is ./.k2hf-work/<hash>
    url = f"file://{tmp_path / 'remote'}" if scheme == "file" else "memory://k2hf-out/run"
    manifest = prepare(_config(root, num_workers=2 if scheme == "file" else 1), url, progress=False)
    fs, base = fsspec.core.url_to_fs(url)
    got = {p[len(base.rstrip("/")) + 1 :]: fs.cat_file(p) for p in fs.find(base)}
    import hashlib

    assert {rel: hashlib.sha256(blob).hexdigest() for rel, blob in got.items()} == _tree_hashes(data.path)
    assert manifest == data.manifest
    assert not (tmp_path / ".k2hf-work").exists() or not any((tmp_path / ".k2hf-work").iterdir())


def test_a_given_work_dir_keeps_what_it_held(corpus, tmp_path):
    """`--work-dir` may be a shared scratch dir: cleaning up removes only what the preparation wrote."""
    root, _ = corpus
    work = tmp_path / "scratch"
    work.mkdir()
    (work / "someone-elses.txt").write_text("keep me")
    prepare(_config(root), tmp_path / "d", progress=False, work_dir=work)
    assert [p.name for p in work.iterdir()] == ["someone-elses.txt"]
    assert (tmp_path / "d" / "manifest.json").is_file() and not (tmp_path / "d" / ".work").exists()


def test_local_workers_stop_even_when_the_parent_catches_sigterm(tmp_path):
    """datatrove's pool stops its forked workers with SIGTERM: a handler the parent installed (ray.init leaves one
    in its driver; a trainer in the same process has one while it trains) must not reach them, or preparing hangs
    after the last task. Run in a subprocess with a timeout, so a hang fails the test instead of the suite."""
    import subprocess
    import sys

    script = ("import signal\n"
              "signal.signal(signal.SIGTERM, lambda s, f: None)\n"
              "from k2hf.pretrain.data.config import load_data_config\n"
              "from k2hf.pretrain.data.prepare import prepare\n"
              f"prepare(load_data_config({str(REPO_ROOT / 'pretrain/configs/data/sample.yaml')!r}, num_workers=2), "
              f"{str(tmp_path / 'data')!r}, progress=False)\n"
              "print(signal.getsignal(signal.SIGTERM).__name__)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                            start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "<lambda>"  # the parent's own handler is back afterwards
    assert PreparedData(tmp_path / "data").verify() == []
