"""Pretraining recipe: dataclasses read from YAML, with K2's paper values as defaults.

Batch geometry is derived, not configured twice: ``global_batch_tokens / seq_len`` rows per optimizer step,
split over ``world_size`` ranks and ``micro_batch_size`` rows per forward pass (gradient accumulation is what
is left). Anything that does not divide fails before the model is built, with the numbers to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from k2hf.recipes import Recipe, RecipeError, Section


@dataclass
class ModelSection(Section):
    """Which K2 to train: a preset (+ overrides), or ``init_from`` a checkpoint (stage 2 starts from stage 1)."""

    preset: Literal["tiny", "k2_65b", "k2_chat_65b"] = "k2_65b"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    rope_theta: float | None = None  # stage 2: K2-Chat uses 500000
    max_position_embeddings: int | None = None
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # torch.compile the model (through accelerate's TorchDynamoPlugin, inductor backend): K2's forward and backward
    # trace as one graph, packed rows included; the first steps pay the compilation.
    compile: bool = False


@dataclass
class OptimSection(Section):
    """AdamW + warmup + cosine (stage 1: 1.5e-4 -> 1.5e-5) or linear-to-zero (stage 2: 1e-4 -> 0)."""

    lr: float = 1.5e-4
    min_lr: float = 1.5e-5
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def validate(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            raise RecipeError(f"need 0 <= optim.min_lr <= optim.lr (got {self.min_lr} and {self.lr})")
        if self.warmup_steps < 0 or self.grad_clip <= 0:
            raise RecipeError("optim.warmup_steps must be >= 0 and optim.grad_clip > 0")


@dataclass
class CheckpointSection(Section):
    """One checkpoint per chunk (``ckpt_001`` ...), optional mid-chunk ones every ``every_steps`` steps."""

    every_steps: int | None = None
    keep_chunk_checkpoints: int | None = None  # None = keep all (K2 released every one)
    keep_step_checkpoints: int = 2
    # signals that stop the run at the next step with a step checkpoint (preemption, time limits); [] = none
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])

    def validate(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise RecipeError("checkpoint.every_steps must be >= 1 (or null for chunk checkpoints only)")
        import signal

        unknown = [name for name in self.preempt_signals if not isinstance(getattr(signal, name, None), signal.Signals)]
        if unknown:
            raise RecipeError(f"checkpoint.preempt_signals: {unknown} are not signals (e.g. SIGTERM, SIGUSR1)")


@dataclass
class LogSection(Section):
    tensorboard: bool = True
    wandb: bool = False
    project: str = "k2hf-pretrain"
    peak_tflops: float | None = None  # per device, for MFU; auto-detected on known GPUs


@dataclass
class SpikeSection(Section):
    """Loss-spike detection and automatic rollback (see :mod:`k2hf.pretrain.spikes`)."""

    enabled: bool = False
    window: int = field(default=50, metadata={"help": "steps of healthy loss the detector's baseline spans"})
    threshold: float = field(default=6.0, metadata={"help": "a spike starts this many MAD-sigmas above baseline"})
    min_delta: float = field(default=0.1, metadata={"help": "... and at least this much above it (nats)"})
    recovery_steps: int = field(default=20, metadata={"help": "steps back near baseline that end a spike"})
    malignant_steps: int = field(default=100, metadata={"help": "a spike lasting this long is malignant"})
    policy: Literal["defer_chunk", "skip_window", "reseed", "halt"] = "defer_chunk"
    max_rollbacks: int = 3
    # Drill only: until the first rollback this chunk reads as uniform random tokens, which drives a malignant
    # spike on purpose so that detection, rollback and every policy can be exercised end to end.
    drill_poison_chunk: int | None = None

    def validate(self) -> None:
        """Settings the detector cannot work with fail here, wherever the section is built (recipe, CLI, demo)."""
        limits = {"window": 4, "recovery_steps": 1, "malignant_steps": 1, "max_rollbacks": 0}  # smallest allowed
        for name, smallest in limits.items():
            value = getattr(self, name)
            if value < smallest:
                why = " (the detector judges a loss only after 4 healthy ones)" if name == "window" else ""
                raise RecipeError(f"spikes.{name} must be at least {smallest}{why}, got {value}")
        if self.threshold <= 0:
            raise RecipeError(f"spikes.threshold must be > 0, got {self.threshold}")
        if self.min_delta < 0:
            raise RecipeError(f"spikes.min_delta must be >= 0, got {self.min_delta}")
        if self.recovery_steps >= self.malignant_steps:
            raise RecipeError(f"spikes.recovery_steps ({self.recovery_steps}) must be < spikes.malignant_steps "
                              f"({self.malignant_steps})")


@dataclass
class TrainConfig(Recipe):
    WHAT: ClassVar[str] = "pretraining config"

    data: str
    output_dir: str
    global_batch_tokens: int = 4 * 1024 * 1024
    micro_batch_size: int = 1
    seed: int = 42
    precision: Literal["bf16", "fp32"] = "bf16"
    max_steps: int | None = None
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    spikes: SpikeSection = field(default_factory=SpikeSection)
    # Resume even though the prepared data changed since the checkpoint (recorded in data_sequence.jsonl).
    allow_data_change: bool = False
    base_dir: str = "."

    def validate(self) -> None:
        if self.micro_batch_size < 1 or self.global_batch_tokens < 1:
            raise RecipeError("micro_batch_size and global_batch_tokens must be positive")


def load_train_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe; ``overrides`` use dotted keys (``optim.lr``) and win over the file."""
    return TrainConfig.load(path, overrides)


@dataclass(frozen=True)
class BatchGeometry:
    """How one optimizer step's rows split over ranks and micro-batches."""

    seq_len: int
    global_rows: int
    world_size: int
    micro_batch_size: int

    @property
    def rows_per_rank(self) -> int:
        return self.global_rows // self.world_size

    @property
    def grad_accum(self) -> int:
        return self.rows_per_rank // self.micro_batch_size


def batch_geometry(config: TrainConfig, seq_len: int, world_size: int) -> BatchGeometry:
    """Derive the geometry, or raise :class:`~k2hf.recipes.RecipeError` naming what to change."""
    if config.global_batch_tokens % seq_len:
        raise RecipeError(
            f"global_batch_tokens ({config.global_batch_tokens}) must be a multiple of the data's seq_len ({seq_len})"
        )
    rows = config.global_batch_tokens // seq_len
    if rows % world_size:
        raise RecipeError(
            f"a global batch of {rows} rows does not split over {world_size} processes: make global_batch_tokens a "
            f"multiple of seq_len x world_size = {seq_len * world_size}"
        )
    if (rows // world_size) % config.micro_batch_size:
        raise RecipeError(
            f"{rows // world_size} rows per process is not a multiple of micro_batch_size "
            f"({config.micro_batch_size}); change micro_batch_size or global_batch_tokens"
        )
    return BatchGeometry(seq_len, rows, world_size, config.micro_batch_size)
