"""k2hf.formats, the one owner of each on-disk contract: typed events, trainer state and the checkpoint lister
read run dirs written before the formats had an owner (tests/fixtures/run_v1: a drill run's record files and
trainer states, written by k2hf at 9dc323d, weights left out) and what today's trainer writes."""

import json
import shutil

import pytest

from conftest import REPO_ROOT
from k2hf.analysis.order import ChunkOrder
from k2hf.analysis.run_record import RunRecord
from k2hf.checkpoints import list_checkpoints
from k2hf.formats import (
    ChunkEnd,
    JsonlFile,
    RecordFileError,
    Rollback,
    RunDir,
    SpikeAction,
    Start,
    TrainerState,
    TrainStep,
    parse_event,
)
from k2hf.formats.events import EventError
from k2hf.pretrain.spikes import analyze

LEGACY_RUN = REPO_ROOT / "tests" / "fixtures" / "run_v1"


def test_every_legacy_record_parses_and_writes_back_unchanged():
    records = JsonlFile(LEGACY_RUN / RunDir.DATA_SEQUENCE).read()
    events = [parse_event(r) for r in records]
    assert [e.to_record() for e in events] == records  # the on-disk format did not change
    assert json.dumps(events[1].to_record()) == (LEGACY_RUN / RunDir.DATA_SEQUENCE).read_text().splitlines()[1]
    kinds = {type(e).__name__ for e in events}
    assert kinds == {"Start", "TrainStep", "ChunkEnd", "Rollback"}
    assert sum(isinstance(e, TrainStep) for e in events) == 40  # 36 kept + 4 diverged, taken back by the rollback


def test_legacy_run_dir_reads_as_the_drill_did():
    run = RunDir(LEGACY_RUN)
    start = run.start()
    assert isinstance(start, Start) and start.order == [0, 1, 2, 3] and start.spikes["window"] == 8
    (rollback,) = [e for e in run.events() if isinstance(e, Rollback)]
    assert (rollback.step, rollback.to_step, rollback.to, rollback.order) == (22, 18, "ckpt_002", [0, 1, 3, 2])
    assert [s.chunk for s in run.live_steps()] == [0] * 9 + [1] * 9 + [3] * 9 + [2] * 9
    assert [s.step for s in run.live_steps()] == list(range(1, 37))
    (spike,) = run.spike_records()  # the prose action of an older k2hf, read as a structured one
    assert spike["action"] == SpikeAction("rollback", to="ckpt_002", policy="defer_chunk")
    assert spike["action"].describe() == "rollback to ckpt_002 + defer_chunk"
    assert [r["step"] for r in run.metrics.read()] == list(range(1, 37))
    assert sorted({r["step"] for r in run.rolled_back.read()}) == [19, 20, 21, 22]


def test_legacy_checkpoints_list_with_their_chunks():
    listed = [(c.name, c.kind, c.number, c.global_step, c.chunk) for c in RunDir(LEGACY_RUN).checkpoints()]
    assert listed == [
        ("ckpt_001", "chunk", 1, 9, 0), ("ckpt_002", "chunk", 2, 18, 1),
        ("spike_001_step_0000022", "spike_evidence", None, 22, 2), ("ckpt_003", "chunk", 3, 27, 3),
        ("step_0000028", "step", None, 28, 2), ("step_0000032", "step", None, 32, 2), ("ckpt_004", "chunk", 4, 36, 2),
    ]
    assert [c.name for c in list_checkpoints(LEGACY_RUN)] == [name for name, *_ in listed]  # one lister for all
    assert RunDir(LEGACY_RUN).latest_checkpoint().name == "ckpt_004"
    assert [c.name for c in RunDir(LEGACY_RUN).training_checkpoints()] == [
        "ckpt_001", "ckpt_002", "ckpt_003", "step_0000028", "step_0000032", "ckpt_004"]


def test_legacy_trainer_state_reads_typed():
    state = TrainerState.read(LEGACY_RUN / "checkpoints" / "ckpt_004")
    assert (state.global_step, state.tokens_seen, state.rollbacks, state.order) == (36, 4608, 1, [0, 1, 3, 2])
    assert state.chunk_trained_last("chunk") == 2 and state.deferred == [2]
    assert state.data_manifest_sha256 and state.data_log_lines == 46  # 1 start, 40 steps, 4 chunk ends, 1 rollback
    raw = json.loads((LEGACY_RUN / "checkpoints" / "ckpt_004" / "trainer_state.json").read_text())
    assert state.to_dict() == raw  # nothing of the file is lost
    older = TrainerState.from_dict({"global_step": 3, "order": [1, 0], "order_pos": 1})  # before later fields
    assert older.data_log_lines is None and older.skip_steps == {} and older.chunk_trained_last("chunk") == 1


def test_legacy_run_record_order_and_rows():
    record = RunRecord(LEGACY_RUN)
    assert [(c.number, c.chunk, c.planned_chunk) for c in record.chunk_checkpoints()] == [
        (1, 0, 0), (2, 1, 1), (3, 3, 2), (4, 2, 3)]
    evidence = record.trained_rows("spike_001_step_0000022")  # the diverged state: 4 steps into chunk 2
    assert {c: len(r) for c, r in evidence.items()} == {0: 18, 1: 18, 2: 8}
    assert {c: len(r) for c, r in record.trained_rows("ckpt_004").items()} == {0: 18, 1: 18, 2: 18, 3: 18}
    assert [e.chunk for e in ChunkOrder.of(LEGACY_RUN).entries] == [0, 1, 3, 2]


def test_legacy_spike_analysis_uses_the_recorded_settings(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, run)
    spikes, png = analyze(run)
    (malignant,) = [s for s in spikes if s["class"] == "malignant"]
    assert (malignant["onset_step"], malignant["end_step"], malignant["rolled_back"]) == (19, 22, True)
    assert png == run / RunDir.SPIKES_ANALYSIS and png.stat().st_size > 10_000


def test_today_s_drill_writes_structured_spike_actions(drill_run):
    run = RunDir(drill_run)
    records = run.data_sequence.read()
    assert [parse_event(r).to_record() for r in records] == records
    (spike,) = run.spikes.read()
    assert spike["action"] == {"kind": "rollback", "to": "ckpt_002", "policy": "defer_chunk"}
    ends = [e for e in run.events() if isinstance(e, ChunkEnd)]
    assert [(e.checkpoint_number, e.chunk) for e in ends] == [(1, 0), (2, 1), (3, 3), (4, 2)]
    legacy = [(c.name, c.kind, c.global_step, c.chunk) for c in RunDir(LEGACY_RUN).checkpoints()]
    assert [(c.name, c.kind, c.global_step, c.chunk) for c in run.checkpoints()] == legacy  # same run, same list


def test_unreadable_records_name_file_and_line(tmp_path):
    log = tmp_path / "data_sequence.jsonl"
    log.write_text('{"step": 0, "event": "start", "order": [0]}\n{"step": 1, "chunk": 0\n')
    with pytest.raises(RecordFileError, match=r"data_sequence.jsonl line 2: malformed json"):
        RunDir(tmp_path).events()
    with pytest.raises(EventError, match="unknown data-sequence event 'teleport'"):
        parse_event({"step": 3, "event": "teleport"})
    with pytest.raises(EventError, match="without 'rows'"):
        parse_event({"step": 3, "chunk": 0, "order_pos": 0})


def test_a_read_only_run_dir_never_writes(tmp_path):
    shutil.copytree(LEGACY_RUN, tmp_path / "run")
    reader = RunDir(tmp_path / "run")
    before = reader.metrics.path.read_text()
    reader.metrics.truncate_after(3)
    reader.append(TrainStep(99, 0, 0, (0, 2)))
    assert reader.metrics.path.read_text() == before and len(reader.events()) == 46


def test_legacy_manifest_reads_typed_and_writes_back_byte_for_byte(tmp_path):
    from k2hf.formats.prepared_data import Manifest

    legacy = REPO_ROOT / "tests" / "fixtures" / "data_v1"
    manifest = Manifest.read(legacy)
    assert (manifest.num_chunks, manifest.seq_len, manifest.total_rows, manifest.vocab) == (4, 64, 76, 428)
    assert [c.rows for c in manifest.chunks] == [19, 19, 19, 19] and manifest.chunks[0].subset_rows["wiki"] == 12
    assert [s.name for s in manifest.subsets] == ["web", "wiki", "code"] and not manifest.is_k2_release
    assert manifest.to_json() == (legacy / "manifest.json").read_text()  # the same bytes: the same data identity
    manifest.write(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == (legacy / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=r"ChunkEntry: unknown fields \['shards'\]"):
        Manifest.from_dict({**manifest.to_dict(), "chunks": [{**manifest.to_dict()["chunks"][0], "shards": 2}]})
