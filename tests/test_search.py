"""Data search and trace (infini-gram): counts and occurrences against a brute-force scan of the chunks, provenance
and first checkpoints (a drill run's deferred chunk included), OLMoTrace-style tracing of an overfitted tiny K2,
contamination of planted benchmark items, and the commands' outputs."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import tiny_k2
from k2hf import cli
from k2hf.pretrain.data.reader import PreparedData

pytest.importorskip("infini_gram", reason="the `search` extra (infini-gram) is not installed")

from k2hf.analysis.data_index import SHARD_JSON, SearchError, build_index  # noqa: E402
from k2hf.analysis.search import DataSearch  # noqa: E402


# ------------------------------------------------------------------ brute force over the chunk files
def _all_rows(data: PreparedData) -> dict[int, np.ndarray]:
    return {c: np.asarray(data.chunk(c).tokens, dtype=np.int64) for c in range(data.num_chunks) if data.rows(c)}


def _scan(rows: dict[int, np.ndarray], ids: list[int]) -> list[tuple[int, int, int]]:
    """Every (chunk, row, offset) where ``ids`` occurs inside one row: numpy over all windows."""
    found = []
    for chunk, block in rows.items():
        if len(ids) > block.shape[1]:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(block, len(ids), axis=1)
        r, o = np.nonzero((windows == np.asarray(ids)).all(axis=2))
        found += [(chunk, int(a), int(b)) for a, b in zip(r, o)]
    return sorted(found)


@pytest.fixture(scope="module")
def index(sample_data, tmp_path_factory):
    """The sample data (4 chunks x 19 rows x 64 tokens) in 2 shards."""
    out = tmp_path_factory.mktemp("search") / "index"
    build_index(sample_data, out, shards=2, progress=False)
    return out


def _queries(rows: dict[int, np.ndarray], seed: int = 0) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    chunks = sorted(rows)
    queries = []
    for _ in range(60):  # n-grams of the data (many occur several times: the wiki subset is repeated 3x)
        block = rows[chunks[rng.integers(len(chunks))]]
        n = int(rng.integers(1, 9))
        r, o = int(rng.integers(len(block))), int(rng.integers(block.shape[1] - n + 1))
        queries.append(("present", block[r, o:o + n].tolist()))
    for _ in range(20):  # across the boundary of two consecutive rows of a chunk
        block = rows[chunks[rng.integers(len(chunks))]]
        r, k = int(rng.integers(len(block) - 1)), int(rng.integers(2, 6))
        queries.append(("straddling", [*block[r, -k:].tolist(), *block[r + 1, :k].tolist()]))
    for _ in range(20):  # random ids: almost surely absent at these lengths
        queries.append(("random", rng.integers(3, 400, size=int(rng.integers(3, 7))).tolist()))
    return queries


def test_counts_and_occurrences_equal_a_brute_force_scan(index, sample_data):
    data = PreparedData(sample_data)
    rows = _all_rows(data)
    search = DataSearch(index)
    kinds = {"present": 0, "straddling": 0, "random": 0}
    for kind, ids in _queries(rows):
        expected = _scan(rows, ids)
        result = search.search(ids, limit=10_000, next_tokens=0)
        assert result.count == len(expected) == search.count(ids), (kind, ids)
        assert sorted((o.chunk, o.row, o.offset) for o in result.occurrences) == expected, (kind, ids)
        kinds[kind] += bool(expected)
    # the query set really covers each case
    assert kinds["present"] == 60 and kinds["random"] <= 2


def test_straddling_spans_are_not_found_but_each_side_is(index, sample_data):
    data = PreparedData(sample_data)
    rows = _all_rows(data)
    search = DataSearch(index)
    block = rows[1]
    ids = [*block[4, -6:].tolist(), *block[5, :6].tolist()]
    assert _scan(rows, ids) == [] and search.count(ids) == 0
    assert search.count(ids[:6]) >= 1 and search.count(ids[6:]) >= 1


def test_next_tokens_and_cnf_equal_a_scan(index, sample_data):
    rows = _all_rows(PreparedData(sample_data))
    search = DataSearch(index)
    block = rows[0]
    prefix = block[3, 10:12].tolist()
    following = {}
    for c, r, o in _scan(rows, prefix):
        if o + 2 < rows[c].shape[1]:
            token = int(rows[c][r, o + 2])
            following[token] = following.get(token, 0) + 1
    got = {t["id"]: t["count"] for t in search.next_tokens(prefix, k=1000)}
    assert got == following
    # (a OR b) AND c within a row: every document reported holds c and one of a, b
    a, b, c = block[3, 0:3].tolist(), block[7, 5:8].tolist(), block[3, 20:23].tolist()
    result = search.search_cnf([[a, b], [c]], limit=100)
    both = {(ch, r) for ch, r, _ in _scan(rows, c)} & ({(ch, r) for ch, r, _ in _scan(rows, a)} |
                                                       {(ch, r) for ch, r, _ in _scan(rows, b)})
    assert result.count >= 1 and {(o.chunk, o.row) for o in result.occurrences} <= both


def test_occurrences_carry_their_source_line_and_the_runs_first_checkpoint(index, sample_data, drill_run):
    """A sentence of one source document (the web subset is not repeated) sits in chunk 2, which the drill run's
    rollback deferred: it planned ckpt_003 for it, but ckpt_004 was the first to have trained on it."""
    data = PreparedData(sample_data)
    pick = next((r, p) for r in range(data.rows(2)) for p in data.describe_row(2, r)
                if p["subset"] == "web" and p["position"][1] - p["position"][0] >= 24)
    row, piece = pick
    start = piece["position"][0] + 4
    ids = data.chunk(2).row(row)[start:start + 12].tolist()
    assert _scan(_all_rows(data), ids) == [(2, row, start)]
    # the source line really holds the sentence
    with open(piece["source"], encoding="utf-8") as f:
        line = f.read().splitlines()[piece["record"]]
    assert data.tokenizer().decode(ids).strip() in json.loads(line)["text"]

    planned = DataSearch(index).search(ids)
    run = DataSearch(index, order=drill_run).search(ids)
    k2_order = DataSearch(index, order="k2").search(ids)
    for result in (planned, run):
        (hit,) = result.occurrences
        assert (hit.chunk, hit.row, hit.offset) == (2, row, start)
        assert (hit.source.subset, hit.source.file, hit.source.record) == ("web", piece["source"], piece["record"])
    assert planned.first_checkpoint == 3 and run.first_checkpoint == 4
    assert k2_order.first_checkpoint == 3  # K2's order starts 0..15: chunk 2 is ckpt_003


def test_the_search_command_prints_the_documented_json(index, sample_data, capsys):
    data = PreparedData(sample_data)
    ids = data.chunk(3).row(5)[20:26].tolist()
    assert cli.main(["data", "search", str(index), "--ids", ",".join(map(str, ids)), "--limit", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = _scan(_all_rows(data), ids)
    assert out["count"] == len(expected)
    assert len(out["occurrences"]) == min(2, len(expected))
    for hit in out["occurrences"]:
        assert set(hit) == {"chunk", "row", "offset", "first_checkpoint", "source"}
        assert set(hit["source"]) == {"subset", "file", "record"}
        assert (hit["chunk"], hit["row"], hit["offset"]) in expected
        assert hit["first_checkpoint"] == data.chunk_order.index(hit["chunk"]) + 1
    # text queries are encoded with the data's tokenizer
    text = data.tokenizer().decode(data.chunk(0).row(12)[:10])
    assert cli.main(["data", "search", str(index), text, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] >= 1


def test_an_index_refuses_other_data_and_names_what_to_do(index, sample_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(sample_data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["seed"] += 1  # as if prepared with another seed: other data, same shape
    (other / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(SearchError, match="built from other data"):
        DataSearch(index, data=other)
    assert cli.main(["data", "search", str(index), "the", "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "k2hf data index" in err


def test_index_builds_resume_shard_by_shard_and_equal_one_shard(sample_data, tmp_path):
    three = build_index(sample_data, tmp_path / "three", shards=3, progress=False)
    assert [s.chunks for s in three.shards] == [[0, 1], [2], [3]]
    assert sum(s.documents for s in three.shards) == 76
    tables = {s.dir: (tmp_path / "three" / s.dir / "table.0").stat().st_mtime_ns for s in three.shards}
    (tmp_path / "three" / "shard_001" / SHARD_JSON).unlink()  # as if its task died before finishing
    build_index(sample_data, tmp_path / "three", shards=3, progress=False)
    after = {s.dir: (tmp_path / "three" / s.dir / "table.0").stat().st_mtime_ns for s in three.shards}
    assert after["shard_000"] == tables["shard_000"] and after["shard_002"] == tables["shard_002"]
    assert after["shard_001"] != tables["shard_001"]
    build_index(sample_data, tmp_path / "one", shards=1, progress=False)
    rows = _all_rows(PreparedData(sample_data))
    a, b = DataSearch(tmp_path / "three"), DataSearch(tmp_path / "one")
    for _, ids in _queries(rows, seed=1)[:30]:
        ra, rb = a.search(ids, limit=1000, next_tokens=5), b.search(ids, limit=1000, next_tokens=5)
        assert ra.to_dict() == rb.to_dict()
    with pytest.raises(SearchError, match="another sharding"):
        build_index(sample_data, tmp_path / "one", shards=2, progress=False)
    # a shard not built yet is named when the index is opened
    (tmp_path / "one" / "shard_000" / SHARD_JSON).unlink()
    with pytest.raises(SearchError, match=r"shards \[0\] are not built"):
        DataSearch(tmp_path / "one")


def test_the_slurm_dry_run_prints_the_sbatch_script(sample_data, tmp_path, capsys):
    out = tmp_path / "idx"
    assert cli.main(["data", "index", str(sample_data), "--out", str(out), "--shards", "2", "--executor", "slurm",
                     "--slurm-partition", "cpu", "--tasks", "2", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "#SBATCH --partition=cpu" in printed and "#SBATCH --array=0-1" in printed
    assert "launch_pickled_pipeline" in printed and "dry run: nothing submitted" in printed
    assert not (out / "shard_000" / SHARD_JSON).exists()


@pytest.mark.slow
def test_a_ray_build_writes_the_same_index_as_a_local_one(sample_data, tmp_path):
    pytest.importorskip("ray")
    import ray

    build_index(sample_data, tmp_path / "local", shards=2, progress=False)
    try:
        build_index(sample_data, tmp_path / "ray", shards=2, executor="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    for shard in ("shard_000", "shard_001"):
        for name in ("tokenized.0", "offset.0", "metadata.0", "table.0"):
            assert (tmp_path / "local" / shard / name).read_bytes() == (tmp_path / "ray" / shard / name).read_bytes()


# ------------------------------------------------------------------ trace
@pytest.fixture(scope="module")
def overfit_model(sample_data, tmp_path_factory):
    """A tiny K2 trained until it knows one web row (a document's start, no eos in its first 48 tokens) and a
    second row by heart; saved with the data's tokenizer. Returns (model dir, chunk, row)."""
    data = PreparedData(sample_data)
    tokenizer = data.tokenizer()
    chunk, row = next((c, r) for c in range(data.num_chunks) for r in range(data.rows(c))
                      if [p["subset"] for p in data.describe_row(c, r)] == ["web"]
                      and data.describe_row(c, r)[0]["document_tokens"][0] == 0
                      and tokenizer.eos_token_id not in data.chunk(c).row(r)[:48])
    rows = torch.tensor(np.stack([data.chunk(chunk).row(row), data.chunk(3).row(2)]))
    model = tiny_k2(vocab=data.manifest.vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        model(input_ids=rows, labels=rows).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("overfit") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, chunk, row


def test_trace_finds_a_memorized_continuation_in_its_row_and_an_unseen_one_nowhere(overfit_model, index,
                                                                                   sample_data, tmp_path, capsys):
    model_dir, chunk, row = overfit_model
    data = PreparedData(sample_data)
    ids = data.chunk(chunk).row(row)
    prompt = data.tokenizer().decode(ids[:16])
    assert data.tokenizer()(prompt, add_special_tokens=False)["input_ids"] == ids[:16].tolist()
    out = tmp_path / "trace"
    # the sample tokenizer's 428 ids are nearly characters: 16 of them are about two words
    assert cli.main(["trace", "--model", str(model_dir), "--index", str(index), "--prompt", prompt,
                     "--max-new-tokens", "32", "--min-len", "16", "--out", str(out)]) == 0
    record = json.loads((out / "trace.json").read_text())
    assert record["ids"] == ids[16:48].tolist()  # the model continues its row verbatim
    (span,) = record["spans"]
    assert set(span) >= {"start", "end", "text", "count", "first_checkpoint"}
    assert (span["start"], span["end"]) == (0, 32) and span["count"] == 1
    assert span["first_checkpoint"] == data.chunk_order.index(chunk) + 1
    assert [(s["chunk"], s["row"], s["offset"]) for s in span["sources"]] == [(chunk, row, 16)]
    assert record["traced_share"] == 1.0
    page = (out / "trace.html").read_text()
    assert "<script" not in page and "<mark" in page and "100.0% of 32 tokens traced" in page

    unseen = tmp_path / "unseen"
    assert cli.main(["trace", "--model", str(model_dir), "--index", str(index), "--prompt",
                     "Zebras juggle violins quietly beneath", "--max-new-tokens", "32", "--min-len", "16",
                     "--out", str(unseen)]) == 0
    assert json.loads((unseen / "trace.json").read_text())["traced_share"] <= 0.1


def test_traced_spans_are_the_maximal_verbatim_spans(index, sample_data):
    """Against a brute force: a span is kept when it occurs and neither one token longer on the left nor on the
    right does (and it is at least min_len long)."""
    from k2hf.analysis.trace import trace_ids

    data = PreparedData(sample_data)
    rows = _all_rows(data)
    search = DataSearch(index)
    rng = np.random.default_rng(3)
    for trial in range(5):
        a, b = rows[trial % 4][trial], rows[(trial + 1) % 4][trial + 2]
        text = [*a[5:30].tolist(), *rng.integers(3, 400, 6).tolist(), *b[:20].tolist()]
        expected, right = [], 0
        for left in range(len(text)):
            right = max(right, left)
            while right < len(text) and _scan(rows, text[left:right + 1]):
                right += 1
            if right - left >= 4 and (not expected or right > expected[-1][1]):
                expected.append((left, right))
        got = trace_ids(search, text, min_len=4)
        assert [(s.start, s.end) for s in got] == expected
        for s in got:
            assert s.count == len(_scan(rows, text[s.start:s.end]))


def test_trace_across_checkpoints_plots_the_traced_share(drill_run, index, tmp_path):
    out = tmp_path / "across"
    assert cli.main(["trace", "--model", str(drill_run), "--index", str(index), "--prompt", "The city",
                     "--checkpoints", "1,4", "--max-new-tokens", "16", "--min-len", "4", "--out", str(out)]) == 0
    record = json.loads((out / "trace.json").read_text())
    assert [t["checkpoint"] for t in record["traces"]] == ["ckpt_001", "ckpt_004"]
    assert record["spans"] == record["traces"][-1]["spans"]
    assert (out / "traced_share.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # first checkpoints come from the run's own record (its model is a run dir)
    for span in record["spans"]:
        assert span["first_checkpoint"] in (None, 1, 2, 3, 4)


# ------------------------------------------------------------------ contamination
def test_planted_benchmark_items_are_contaminated_and_the_others_not(index, sample_data, drill_run, tmp_path):
    data = PreparedData(sample_data)
    tokenizer = data.tokenizer()
    rows = _all_rows(data)
    planted = {"q-chunk2": (2, 6), "q-chunk0": (0, 12), "q-chunk3": (3, 10)}
    items = [{"id": key, "text": "Question: " + tokenizer.decode(rows[c][r][8:40]) + " Answer?"}
             for key, (c, r) in planted.items()]
    items += [{"id": f"clean-{i}", "text": text} for i, text in enumerate([
        "Zebras juggle seventeen violins quietly beneath an orange moon in winter.",
        "Which prime number follows 89, and why is it not divisible by three or seven?",
        "Quokkas photograph xylophones during zany yellow thunderstorms, or so Ptolemy wrote."])]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "cont"
    assert cli.main(["analyze", "contamination", "--index", str(index), "--items", str(path), "--order",
                     str(drill_run), "--out", str(out)]) == 0
    record = json.loads((out / "contamination.json").read_text())
    got = {i["id"]: i for i in record["items"]}
    for key in planted:
        assert got[key]["contaminated"], key
    for item in items:  # every verdict is the brute force's: does any 13-gram of the item occur in a row?
        ids = tokenizer(item["text"], add_special_tokens=False)["input_ids"]
        assert got[item["id"]]["contaminated"] == any(_scan(rows, ids[s:s + 13]) for s in range(len(ids) - 12))
    for i in range(3):
        assert not got[f"clean-{i}"]["contaminated"] and got[f"clean-{i}"]["first_checkpoint"] is None
    # first checkpoint: the earliest of every matched 13-gram, by brute force and the run's record
    run_first = {0: 1, 1: 2, 3: 3, 2: 4}  # the drill deferred chunk 2
    for key in planted:
        ids = tokenizer(next(i["text"] for i in items if i["id"] == key), add_special_tokens=False)["input_ids"]
        chunks = {c for s in range(len(ids) - 12) for c, _, _ in _scan(rows, ids[s:s + 13])}
        assert got[key]["first_checkpoint"] == min(run_first[c] for c in chunks), key
    assert record["tasks"]["items"]["contaminated"] == 3 and record["tasks"]["items"]["fraction"] == 0.5
    assert (out / "contamination.csv").read_text().count("\n") == 7
    assert (out / "contamination.png").read_bytes()[:4] == b"\x89PNG"


def test_contamination_reads_harness_tasks(index, sample_data, tmp_path):
    pytest.importorskip("lm_eval")
    from k2hf.analysis.contamination import analyze_contamination, task_items

    items = task_items(["k2hf_mc"])
    assert len(items["k2hf_mc"]) == 8 and items["k2hf_mc"][0]["text"] == "The highest mountain in Africa is"
    record = analyze_contamination(DataSearch(index), items, tmp_path / "c", progress=False)
    assert record["tasks"]["k2hf_mc"]["items"] == 8
    data = PreparedData(sample_data)
    rows, tokenizer = _all_rows(data), data.tokenizer()
    for item, result in zip(items["k2hf_mc"], record["items"]):
        ids = tokenizer(item["text"], add_special_tokens=False)["input_ids"]
        assert result["contaminated"] == any(_scan(rows, ids[s:s + 13]) for s in range(len(ids) - 12))


def test_search_without_the_extra_says_how_to_install(monkeypatch, sample_data, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "infini_gram", None)  # as where the wheel is not installed
    assert cli.main(["data", "index", str(sample_data), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'k2hf[search]'" in err
