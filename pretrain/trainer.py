"""K2 pretraining loop on accelerate (DeepSpeed ZeRO-2/3, FSDP2, DDP: chosen by the accelerate config alone).

The trainer wires components that each own one thing: :class:`~.position.DataPosition` (which rows each step and
rank trains on, and where the run is), :class:`~.checkpointing.Checkpointer` (atomic saves, retention, resume,
rollback targets), :class:`~.monitoring.RunLogs` (the data-sequence log, metrics, curves) and, when enabled, the
:class:`~.spikes.SpikeMonitor` callback, whose actions (rollback with a policy, halt) it carries out through the
components' public methods. Every optimizer step appends the exact rows it consumed to ``data_sequence.jsonl``;
after each chunk a checkpoint ``ckpt_NNN`` is written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, InitProcessGroupKwargs, TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_linear_schedule_with_warmup

from k2hf.formats import (
    DataChanged,
    End,
    Halt,
    Rollback,
    RunDir,
    TrainerState,
    chunk_checkpoint_name,
    spike_evidence_name,
    step_checkpoint_name,
)
from k2hf.formats import SpikeAction as RecordedAction
from k2hf.formats.prepared_data import MANIFEST
from k2hf.modeling import K2Config, K2ForCausalLM
from k2hf.recipes import RecipeError
from k2hf.tokenizer import padded_vocab_rows

from .checkpointing import Checkpointer
from .config import BatchGeometry, TrainConfig, batch_geometry
from .data.reader import PreparedData
from .monitoring import RunLogs, device_peak_tflops, flops_per_token, peak_memory_gb
from .position import DataPosition, Step, poisoned_chunk
from .preemption import Preempted, PreemptionWatch
from .spikes import Spike, SpikeAction, SpikeMonitor

logger = get_logger(__name__)  # accelerate's: rank 0 only


@dataclass
class Progress:
    """The loop's counters (saved with the data position in ``trainer_state.json``)."""

    global_step: int = 0
    tokens_seen: int = 0  # tokens of every optimizer step the model state went through
    rollbacks: int = 0


class Pretrainer:
    """Owns the accelerator, model, optimizer and schedule of one run, and the loop that wires the components."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.data = PreparedData(config.resolve(config.data))
        self.output_dir = Path(config.resolve(config.output_dir))
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        # CPU multi-process (CI): gloo; DeepSpeed on CPU otherwise fails with a batch-size assertion
        kwargs = [InitProcessGroupKwargs(backend="gloo")] if distributed and not torch.cuda.is_available() else []
        if config.model.compile and config.model.attn_implementation == "flex_attention":
            # transformers builds flex block masks through torch's deprecated `create_block_mask(_compile=True)`,
            # whose `warnings.warn` dynamo cannot trace (a graph break per step); skip the warning while tracing
            torch._dynamo.config.ignore_logging_functions.add(warnings.warn)
        trackers = (["tensorboard"] if config.log.tensorboard else []) + (["wandb"] if config.log.wandb else [])
        self.accelerator = Accelerator(
            mixed_precision="bf16" if config.precision == "bf16" else "no",
            log_with=trackers or None,
            project_dir=str(self.output_dir),
            step_scheduler_with_optimizer=False,
            kwargs_handlers=kwargs,
            # None leaves accelerate's own launch settings (`--dynamo_backend`) in charge
            dynamo_plugin=TorchDynamoPlugin(backend="inductor") if config.model.compile else None,
        )
        self.geometry = batch_geometry(config, self.data.seq_len, self.accelerator.num_processes)
        self.accelerator.gradient_accumulation_steps = self.geometry.grad_accum
        self._configure_deepspeed(self.geometry)
        self.position = DataPosition(self.data, self.geometry, self.accelerator.process_index)
        self.run = RunDir(self.output_dir, writable=self.accelerator.is_main_process)
        self.logs = RunLogs(self.run)
        self.monitor = SpikeMonitor(config.spikes, config.seed) if config.spikes.enabled else None
        self.progress = Progress()
        self.halted = False
        self.tokenizer = self.data.tokenizer()
        self.total_steps = self.position.planned_steps(config.max_steps)
        if self.total_steps == 0:
            rows = sorted({self.data.rows(c) for c in self.position.order})
            raise RecipeError(
                f"this run has 0 planned steps: a step takes {self.geometry.global_rows} rows and the chunks hold "
                f"{rows[0]}..{rows[-1]} rows: lower global_batch_tokens, or prepare more data"
                if rows else "this run has 0 planned steps: the data has no chunk to train on")

    # ---------------------------------------------------------------- setup
    def _configure_deepspeed(self, geometry: BatchGeometry) -> None:
        """Batch geometry and clipping come from our recipe; the accelerate config only picks the engine."""
        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = geometry.micro_batch_size
        ds["gradient_accumulation_steps"] = geometry.grad_accum
        ds["train_batch_size"] = geometry.global_rows
        ds["gradient_clipping"] = self.config.optim.grad_clip
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True

    def build_model(self) -> K2ForCausalLM:
        config = self.config
        vocab = self.data.manifest.vocab
        if config.model.init_from:
            source = config.resolve(config.model.init_from)
            model_config = K2Config.from_pretrained(source)
        else:
            overrides = dict(config.model.overrides)
            if overrides.get("vocab_size") == "auto":
                overrides["vocab_size"] = padded_vocab_rows(vocab)
            model_config = getattr(K2Config, config.model.preset)(**overrides)
        if config.model.rope_theta is not None:
            theta = float(config.model.rope_theta)
            model_config.rope_parameters = {**model_config.rope_parameters, "rope_theta": theta}
        if config.model.max_position_embeddings is not None:
            model_config.max_position_embeddings = config.model.max_position_embeddings
        if model_config.vocab_size < vocab:
            raise RecipeError(
                f"model vocab_size {model_config.vocab_size} < tokenizer size {vocab}: set model.overrides.vocab_size"
            )
        self.data.check_readable(self.position.order)  # before any weight is built
        if model_config.max_position_embeddings < self.data.seq_len:
            raise RecipeError(
                f"data seq_len {self.data.seq_len} exceeds max_position_embeddings "
                f"{model_config.max_position_embeddings}: set model.max_position_embeddings"
            )
        set_seed(config.seed)
        kwargs = {"attn_implementation": config.model.attn_implementation, "dtype": torch.float32}
        if config.model.init_from:
            model = K2ForCausalLM.from_pretrained(config.resolve(config.model.init_from), config=model_config, **kwargs)
        else:
            model = K2ForCausalLM._from_config(model_config, **kwargs)  # zero.Init under ZeRO-3
        if config.model.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """AdamW; weight decay on matrices only (not on norms or biases)."""
        o = self.config.optim
        params = [p for p in model.parameters() if p.requires_grad]
        # under ZeRO-3's zero.Init a parameter is a flat partition; its real shape is `ds_shape`
        is_matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 for p in params]
        decay = [p for p, matrix in zip(params, is_matrix) if matrix]
        no_decay = [p for p, matrix in zip(params, is_matrix) if not matrix]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = {"fused": True} if torch.cuda.is_available() else {}
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, **fused)

    def build_scheduler(self, optimizer: torch.optim.Optimizer):
        """transformers' own schedules: warmup + cosine to ``min_lr`` (stage 1) or warmup + linear to 0 (stage 2)."""
        o = self.config.optim
        if o.schedule == "cosine":
            return get_cosine_with_min_lr_schedule_with_warmup(
                optimizer, o.warmup_steps, self.total_steps, min_lr=o.min_lr
            )
        return get_linear_schedule_with_warmup(optimizer, o.warmup_steps, self.total_steps)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> TrainerState:
        """What ``trainer_state.json`` holds: the counters, the data position, and the data log's length."""
        return TrainerState(**asdict(self.progress), **self.position.state_dict(),
                            data_log_lines=self.logs.data.line_count(),
                            data_manifest_sha256=self.data.manifest_sha256,
                            spikes_lines=self.logs.spikes.line_count(),
                            rolled_back_lines=self.logs.rolled_back.line_count())

    def load_state_dict(self, state: TrainerState, rollback: bool = False) -> None:
        rollbacks = self.progress.rollbacks
        self.progress = Progress(**{k: getattr(state, k) for k in asdict(self.progress)})
        self.position.load_state_dict(state.position(), keep_deferred=rollback)
        if rollback:
            self.progress.rollbacks = rollbacks + 1
        self.total_steps = self.position.planned_steps(self.config.max_steps)

    # ---------------------------------------------------------------- run
    def setup(self) -> None:
        model = self.build_model()
        self.flops_per_token = flops_per_token(model.config, self.data.seq_len)
        optimizer = self.build_optimizer(model)
        # on the torch optimizer: DeepSpeed steps it with the lr its param groups hold
        self.scheduler = self.build_scheduler(optimizer)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpointer = Checkpointer(self.accelerator, self.model, self.tokenizer, self.run, self.config.checkpoint)
        resumed = self.checkpointer.resume()
        if resumed is not None:
            path, state = resumed
            self._check_same_data(path, state)
            committed = self.logs.committed_rollback(path.name, state)
            if committed is not None:  # the run died after rolling back to `path`: apply the decision again
                rollback = committed[1]
                state = dataclasses.replace(state, **rollback.position, rollbacks=rollback.rollbacks)
                logger.info("re-applying the rollback to %s committed at step %d", path.name, rollback.step)
            self.load_state_dict(state)
            self.logs.resume(state, committed)
            if state.data_manifest_sha256 not in (None, self.data.manifest_sha256):
                self.logs.event(DataChanged(self.progress.global_step, state.data_manifest_sha256,
                                            self.data.manifest_sha256, str(self.data.path.resolve())))
            logger.info("resumed from %s at step %d", path.name, self.progress.global_step)
        else:
            self.logs.start(self.position.order, str(self.data.path.resolve()), asdict(self.config.spikes))
        self.accelerator.wait_for_everyone()  # rank 0 may just have cut metrics.jsonl back for the resume
        if self.monitor is not None:
            self.monitor.prime(self.logs.metrics_upto(self.progress.global_step))
        drill = self.config.spikes.drill_poison_chunk
        if drill is not None and self.progress.rollbacks == 0:  # the drill's fault lasts until the first rollback
            self.position.fault = poisoned_chunk(drill, self.data.manifest.vocab, self.config.seed)
        self.accelerator.init_trackers(self.config.log.project, config=_flat_config(self.config.to_dict()))

    def _check_same_data(self, checkpoint: Path, state: TrainerState) -> None:
        """Refuse to resume onto data other than the checkpoint's (unless ``allow_data_change``)."""
        recorded = state.data_manifest_sha256  # None: a checkpoint from before this was recorded
        if recorded is None or recorded == self.data.manifest_sha256 or self.config.allow_data_change:
            return
        raise RecipeError(
            f"{self.data.path / MANIFEST} changed since {checkpoint.name} was saved (sha256 {recorded[:12]} -> "
            f"{self.data.manifest_sha256[:12]}): resuming would train on other rows. Point `data:` at the data this "
            "run started on, or rerun with --set allow_data_change=true to continue on the new data on purpose")

    def train_step(self, step: Step) -> tuple[float, float]:
        """One optimizer step over this rank's rows (gradient accumulation inside); returns (loss, grad norm)."""
        g = self.geometry
        losses = []
        grad_norm = None
        for i in range(g.grad_accum):
            micro = step.mine[i * g.micro_batch_size : (i + 1) * g.micro_batch_size]
            tokens = self.position.tokens(step.chunk, micro)
            batch = torch.from_numpy(tokens.astype(np.int64)).to(self.accelerator.device)
            with self.accelerator.accumulate(self.model):
                loss = self.model(input_ids=batch, labels=batch, use_cache=False).loss
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad()
            losses.append(loss.detach())
        self.scheduler.step()
        step_loss = self.accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        norm = float(grad_norm) if grad_norm is not None else float("nan")
        return step_loss, norm

    def train(self) -> Progress:
        """Run (or resume) until the data sequence or ``max_steps`` is exhausted; returns the final counters.
        Raises :class:`~.preemption.Preempted` after saving a step checkpoint when a preemption signal arrived."""
        self.setup()
        with PreemptionWatch(self.config.checkpoint.preempt_signals) as watch:
            self._loop(watch)
        return self.progress

    def _loop(self, watch: PreemptionWatch) -> None:
        acc, g, progress = self.accelerator, self.geometry, self.progress
        self.bar = tqdm(total=self.total_steps, initial=progress.global_step, desc="pretrain", unit="step",
                        disable=not acc.is_main_process)
        peak = device_peak_tflops(self.config.log.peak_tflops)
        while not self.halted and not (self.config.max_steps and progress.global_step >= self.config.max_steps):
            step = self.position.next()
            if step is None:
                break
            if step.kind != "train":
                self.logs.event(step.event(progress.global_step))
                if step.kind == "chunk_end":
                    self.checkpoint(chunk_checkpoint_name(step.order_pos + 1))
                continue
            started = time.perf_counter()
            loss, grad_norm = self.train_step(step)
            elapsed = time.perf_counter() - started
            progress.global_step += 1
            progress.tokens_seen += g.global_rows * g.seq_len
            tokens_per_s = g.global_rows * g.seq_len / elapsed
            record = {
                "step": progress.global_step, "loss": loss, "grad_norm": grad_norm,
                "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
                "mfu": (tokens_per_s * self.flops_per_token / acc.num_processes / (peak * 1e12)) if peak else None,
                "peak_mem_gb": peak_memory_gb(), "chunk": step.chunk,
                "seconds": elapsed, "processes": acc.num_processes,  # device time of the step (energy reports)
            }
            self.logs.event(step.event(progress.global_step))
            self.logs.metrics.append(record)
            acc.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=progress.global_step)
            self.bar.update()
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            if self.monitor is not None:
                action = self.monitor.on_step(record, step, progress.rollbacks)
                if action.spike is not None and self._handle_spike(action):
                    progress = self.progress  # a rollback restored other counters
                    continue
            every = self.config.checkpoint.every_steps
            saved = every and progress.global_step % every == 0 and self.position.mid_chunk
            if saved:
                self.checkpoint(step_checkpoint_name(progress.global_step))
            if watch.requested(acc.device):  # every rank, every step boundary: the ranks agree where to stop
                self._stop_preempted(watch, already_saved=bool(saved))
        reason = "halted" if self.halted else "data" if self.position.exhausted else "max_steps"
        self.logs.event(End(progress.global_step, reason))
        self.bar.close()
        self.plot_curves()
        acc.end_training()

    def _stop_preempted(self, watch: PreemptionWatch, already_saved: bool) -> None:
        step = self.progress.global_step
        name = step_checkpoint_name(step)
        if not already_saved:
            self.checkpoint(name)
        self.bar.close()
        acc = self.accelerator
        acc.end_training()
        reason = watch.received or "a signal on another rank"
        logger.warning("preempted (%s) at step %d: %s saved", reason, step, name)
        raise Preempted(f"preempted ({reason}) at step {step}; checkpoint {name} saved: rerun the same command to "
                        "resume")

    def checkpoint(self, name: str) -> Path:
        path = self.checkpointer.save(name, self.state_dict())
        self.plot_curves()
        return path

    def plot_curves(self) -> Path | None:
        return self.logs.plot(title=f"K2 pretraining ({self.output_dir.name})")

    # ---------------------------------------------------------------- spike actions
    def _handle_spike(self, action: SpikeAction) -> bool:
        """Carry out a spike action; True when the position changed (rollback or halt)."""
        spike, outcome = action.spike, RecordedAction("none")
        if action.kind != "none":
            logger.warning("malignant loss spike: onset step %d, now %d", spike.onset_step, spike.end_step)
            evidence = self._keep_evidence()
            target = self.checkpointer.last_before(spike.onset_step) if action.kind == "rollback" else None
            if target is None:
                self.halted = True
                reason = action.reason or "no checkpoint before onset"
                self.logs.event(Halt(self.progress.global_step, reason, evidence))
                outcome = RecordedAction("halt", reason=reason)
            else:
                self._roll_back(target, spike, evidence)
                return True
        self.logs.spike(spike.summary(), outcome)
        return outcome.kind != "none"

    def _roll_back(self, target: Path, spike: Spike, evidence: str) -> None:
        """Restore ``target``, change the data position by the policy, and make the decision durable before any
        further step: the diverged checkpoints leave (``target`` is the newest again), the spike and the metrics
        taken back are recorded, and the rollback event commits it all (a resume from ``target`` re-applies it)."""
        diverged_at = self.progress.global_step
        self.load_state_dict(self.checkpointer.load(target), rollback=True)
        self.monitor.apply_policy(self.position, spike, self.progress.rollbacks)  # reorders or skips: same plan
        self.position.fault = None  # the drill's fault is transient
        step = self.progress.global_step
        self.checkpointer.supersede_after(step, self.output_dir / evidence)
        self.logs.spike(spike.summary(), RecordedAction("rollback", to=target.name, policy=self.config.spikes.policy))
        self.logs.take_back(step, self.progress.rollbacks)  # measured, kept, marked as taken back
        self.logs.event(Rollback(
            diverged_at, to_step=step, to=target.name, onset_step=spike.onset_step, policy=self.config.spikes.policy,
            order=list(self.position.order), order_pos=self.position.order_pos,
            step_in_chunk=self.position.step_in_chunk, evidence=evidence, position=self.position.state_dict(),
            rollbacks=self.progress.rollbacks, spikes_lines=self.logs.spikes.line_count(),
            rolled_back_lines=self.logs.rolled_back.line_count(),
        ))
        self.accelerator.wait_for_everyone()
        self.monitor.prime(self.logs.metrics_upto(step))
        self.bar.n, self.bar.total = step, self.total_steps

    def _keep_evidence(self) -> str:
        """Save the diverged model (like K2-Spike-1/2) and its curve under ``spikes/spike_NNN``."""
        name = spike_evidence_name(self.progress.rollbacks + 1, self.progress.global_step)
        self.checkpointer.save(name, self.state_dict(), root=self.run.evidence_dir)
        if self.accelerator.is_main_process:
            shutil.copy(self.logs.metrics.path, self.run.evidence(name) / RunDir.DIVERGED_METRICS)
        return self.run.evidence_ref(name)


def reset_accelerate_state() -> None:
    """Forget the process-wide accelerate state, so another run (or an SFT trainer) can start in this process."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _flat_config(tree: dict, prefix: str = "") -> dict:
    """Scalars of the recipe, flattened for experiment trackers."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat
