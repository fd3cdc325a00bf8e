"""The on-disk contracts of k2hf, one owner each: what every file of a run dir and a data dir is, read and
written through one module.

| file | owner |
| --- | --- |
| a run dir's layout, ``checkpoints/``, ``spikes/`` (evidence) | :class:`.run_dir.RunDir` |
| ``data_sequence.jsonl`` records, ``spikes.jsonl``'s actions | :mod:`.events` |
| ``metrics.jsonl``, ``metrics_rolled_back.jsonl`` (any JSONL record file) | :class:`.jsonl.JsonlFile` |
| a checkpoint's name and ``trainer_state.json`` | :mod:`.checkpoint` (:class:`.checkpoint.TrainerState`) |
| a prepared data dir (``manifest.json``, chunk token and provenance files) | :mod:`k2hf.data_format` |
"""

from .checkpoint import (
    CHUNK_CHECKPOINT,
    SPIKE_EVIDENCE,
    STEP_CHECKPOINT,
    TRAINER_STATE,
    TRAINING_STATE_DIR,
    Checkpoint,
    TrainerState,
    chunk_checkpoint_name,
    kind_of,
    spike_evidence_name,
    step_checkpoint_name,
)
from .events import (
    ChunkEnd,
    DataChanged,
    End,
    Event,
    Halt,
    Rollback,
    Skip,
    SpikeAction,
    Start,
    TrainStep,
    live_steps,
    parse_event,
    spike_action,
    spike_record,
)
from .jsonl import JsonlFile, RecordFileError
from .run_dir import RunDir

__all__ = ["CHUNK_CHECKPOINT", "SPIKE_EVIDENCE", "STEP_CHECKPOINT", "TRAINER_STATE", "TRAINING_STATE_DIR",
           "Checkpoint", "ChunkEnd", "DataChanged", "End", "Event", "Halt", "JsonlFile", "RecordFileError", "Rollback",
           "RunDir", "Skip", "SpikeAction", "Start", "TrainStep", "TrainerState", "chunk_checkpoint_name", "kind_of",
           "live_steps", "parse_event", "spike_action", "spike_evidence_name", "spike_record", "step_checkpoint_name"]
