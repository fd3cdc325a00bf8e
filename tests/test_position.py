"""The pretraining components on their own: the data position (row selection, state, policy changes, the drill's
data fault) and the spike monitor's actions. No model, no accelerator: these are unit tests of the fast tier."""

import json

import numpy as np
import pytest

from k2hf.pretrain.config import BatchGeometry, SpikeSection
from k2hf.pretrain.data.reader import PreparedData
from k2hf.pretrain.position import DataPosition, poisoned_chunk
from k2hf.pretrain.spikes import SpikeMonitor

GEOMETRY = BatchGeometry(seq_len=64, global_rows=4, world_size=2, micro_batch_size=1)  # 4 steps per 19-row chunk


def _walk(position: DataPosition) -> list[tuple]:
    steps = []
    while (step := position.next()) is not None:
        mine = step.mine.tolist() if step.mine is not None else None
        steps.append((step.kind, step.chunk, step.step_in_chunk, step.rows, mine, step.row_ids))
    return steps


@pytest.fixture
def data(sample_data) -> PreparedData:
    return PreparedData(sample_data)


def test_steps_walk_the_chunks_in_order_and_split_rows_over_ranks(data):
    ranks = [_walk(DataPosition(data, GEOMETRY, rank)) for rank in (0, 1)]
    kinds = [(kind, chunk) for kind, chunk, *_ in ranks[0]]
    assert kinds == [(k, c) for c in data.chunk_order for k in ["train"] * 4 + ["chunk_end"]]
    for a, b in zip(*ranks):
        assert a[:4] == b[:4]  # every rank agrees on the step
        if a[0] == "train":
            start, end = a[3]
            assert a[4] + b[4] == list(range(start, end)) and len(a[4]) == 2  # contiguous halves
        else:
            assert a[3] == (16, 19)  # the rows that do not fill a last global batch
    position = DataPosition(data, GEOMETRY)
    _walk(position)
    assert position.exhausted and position.skipped_rows == {str(c): [[16, 19]] for c in data.chunk_order}
    assert position.planned_steps() == 16 and position.planned_steps(max_steps=5) == 5


def test_state_dict_round_trip_resumes_exactly(data):
    reference = _walk(DataPosition(data, GEOMETRY, 1))
    for cut in (0, 3, 5, 9, len(reference) - 1):
        position = DataPosition(data, GEOMETRY, 1)
        for _ in range(cut):
            position.next()
        state = json.loads(json.dumps(position.state_dict()))  # what trainer_state.json holds
        resumed = DataPosition(data, GEOMETRY, 1)
        resumed.load_state_dict(state)
        assert _walk(resumed) == reference[cut:]


def test_policies_change_the_position_only_through_its_methods(data):
    position = DataPosition(data, GEOMETRY)
    for _ in range(5 + 2):  # chunk 0 done (4 steps + its end), 2 steps into chunk 1
        position.next()
    position.defer(1)  # the spike began in chunk 1, the position is inside it: it resumes there later
    assert position.order == [0, 2, 3, 1] and position.step_in_chunk == 0 and position.resume_steps == {"1": 2}
    assert position.deferred == [1]
    rest = _walk(position)
    assert [(c, s) for kind, c, s, *_ in rest if kind == "train"] == (
        [(2, s) for s in range(4)] + [(3, s) for s in range(4)] + [(1, 2), (1, 3)])

    position = DataPosition(data, GEOMETRY)
    position.skip(0, 1, 3)
    assert [(kind, rows) for kind, c, s, rows, *_ in _walk(position)[:5]] == [
        ("train", (0, 4)), ("skip", (4, 8)), ("skip", (8, 12)), ("train", (12, 16)), ("chunk_end", (16, 19))]

    position = DataPosition(data, GEOMETRY)
    position.next()
    position.reseed(seed=7)  # rows from step 1 on are reshuffled; step 0's rows were trained already
    steps = _walk(position)[:4]
    ids = [i for *_, row_ids in steps[:3] for i in row_ids]
    assert sorted(ids + steps[3][5]) == list(range(4, 19)) and ids != list(range(4, 16))
    kept = json.loads(json.dumps(position.state_dict()))
    position.load_state_dict({"order": [0, 1, 2, 3]}, keep_deferred=True)
    assert position.reseeds == {} and kept["reseeds"] == {"0": [1, 7]}


def test_the_drill_fault_poisons_one_chunk(data):
    position = DataPosition(data, GEOMETRY)
    rows = np.array([2, 3])
    clean = {c: position.tokens(c, rows) for c in (1, 2)}
    vocab = data.manifest.tokenizer.vocab
    position.fault = poisoned_chunk(2, vocab, seed=42)
    poisoned = position.tokens(2, rows)
    assert np.array_equal(position.tokens(1, rows), clean[1])
    assert poisoned.shape == clean[2].shape and not np.array_equal(poisoned, clean[2])
    assert poisoned.min() >= 3 and poisoned.max() < vocab
    assert np.array_equal(poisoned, position.tokens(2, rows))  # deterministic: a resume reads the same
    position.fault = None
    assert np.array_equal(position.tokens(2, rows), clean[2])


def _feed(monitor: SpikeMonitor, data, losses: list[float], rollbacks: int = 0) -> list:
    position = DataPosition(data, BatchGeometry(seq_len=64, global_rows=1, world_size=1, micro_batch_size=1))
    actions = []
    for number, loss in enumerate(losses, start=1):
        step = position.next()
        while step.kind != "train":
            step = position.next()
        actions.append(monitor.on_step({"step": number, "loss": loss, "grad_norm": 0.5}, step, rollbacks))
    return actions


SPIKES = SpikeSection(enabled=True, window=8, threshold=6.0, min_delta=0.3, recovery_steps=2, malignant_steps=4)


def test_the_monitor_returns_actions(data):
    healthy = [3.0 - 0.01 * i for i in range(12)]
    actions = _feed(SpikeMonitor(SPIKES, seed=0), data, healthy + [5.0, 2.9, 2.9])  # one step up: benign
    assert [a.kind for a in actions] == ["none"] * 15
    assert actions[13].spike.cls == "benign" and [a.spike for a in actions[:13]] == [None] * 13
    monitor = SpikeMonitor(SPIKES, seed=0)
    actions = _feed(monitor, data, healthy + [5.0] * 4)
    assert [a.kind for a in actions[-4:]] == ["none", "none", "none", "rollback"]
    spike = actions[-1].spike
    assert (spike.onset_step, spike.end_step, spike.cls) == (13, 16, "malignant")
    assert monitor.position_of(13) == (0, 12)  # one row a step: step 13 trained chunk 0's 13th step
    halt = _feed(SpikeMonitor(SpikeSection(**{**SPIKES.__dict__, "policy": "halt"}), 0), data, healthy + [5.0] * 4)
    assert (halt[-1].kind, halt[-1].reason) == ("halt", "policy halt")
    spent = _feed(SpikeMonitor(SPIKES, 0), data, healthy + [5.0] * 4, rollbacks=3)
    assert (spent[-1].kind, spent[-1].reason) == ("halt", "max_rollbacks (3) reached")


def test_the_defer_policy_moves_the_onset_chunk_to_the_end(data):
    monitor = SpikeMonitor(SPIKES, seed=0)
    actions = _feed(monitor, data, [3.0 - 0.01 * i for i in range(20)] + [5.0] * 4)
    assert monitor.position_of(actions[-1].spike.onset_step) == (1, 1)  # 19 steps per chunk: onset in chunk 1
    position = DataPosition(data, GEOMETRY)
    monitor.apply_policy(position, actions[-1].spike, rollbacks=1)
    assert position.order == [0, 2, 3, 1] and position.deferred == [1]
