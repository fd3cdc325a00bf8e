"""K2 pretraining loop on accelerate (DeepSpeed ZeRO-2/3, FSDP2, DDP: chosen by the accelerate config alone).

Data: rows are read straight from the prepared chunks (memory-mapped) in the manifest's chunk order; a global
batch is ``global_rows`` consecutive rows of the current chunk, rank ``r`` taking its contiguous slice. The
position is (chunk in order, step in chunk), so resuming seeks in O(1) and replays nothing. Rows of a chunk that
do not fill a last global batch are never trained on and are logged as such.

Every optimizer step appends the exact rows it consumed to ``data_sequence.jsonl``; after each chunk a
checkpoint ``ckpt_NNN`` is written (see :mod:`.checkpointing`).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_linear_schedule_with_warmup

from k2hf.checkpoints import chunk_checkpoint_name, step_checkpoint_name
from k2hf.modeling import K2Config, K2ForCausalLM
from k2hf.tokenizer import padded_vocab_rows

from .checkpointing import (
    TRAINER_STATE,
    TRAINING_STATE_DIR,
    TrainerState,
    apply_retention,
    clean_partial_saves,
    latest_checkpoint,
    save_checkpoint,
)
from .config import BatchGeometry, TrainConfig, TrainConfigError, batch_geometry
from .data.reader import PreparedData
from .monitoring import (
    METRICS,
    ROLLED_BACK,
    JsonlLog,
    device_peak_tflops,
    flops_per_token,
    peak_memory_gb,
    plot_training_curves,
)

DATA_LOG = "data_sequence.jsonl"
CURVES = "training_curves.png"


class Pretrainer:
    """Owns the accelerator, model, optimizer, schedule and data position of one run."""

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
        self.ckpt_root = self.output_dir / "checkpoints"
        is_main = self.accelerator.is_main_process
        self.data_log = JsonlLog(self.output_dir / DATA_LOG, is_main)  # every step's chunk and rows, and events
        self.metrics = JsonlLog(self.output_dir / METRICS, is_main)
        self.rolled_back = JsonlLog(self.output_dir / ROLLED_BACK, is_main)  # kept: what rollbacks took back
        self.tokenizer = self.data.tokenizer()
        self.state = TrainerState(order=list(self.data.chunk_order))
        self.total_steps = self._planned_steps(self.state.order)
        if self.total_steps == 0:
            rows = sorted({self.data.manifest["chunks"][c]["rows"] for c in self.state.order})
            raise TrainConfigError(
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

    def _planned_steps(self, order: list[int]) -> int:
        steps = sum(self.steps_in_chunk(c) for c in order)
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def steps_in_chunk(self, chunk: int) -> int:
        return self.data.manifest["chunks"][chunk]["rows"] // self.geometry.global_rows

    def build_model(self) -> K2ForCausalLM:
        config = self.config
        vocab = self.data.manifest["tokenizer"]["vocab"]
        if config.model.init_from:
            source = config.resolve(config.model.init_from)
            model_config = K2Config.from_pretrained(source)
        else:
            overrides = dict(config.model.overrides)
            if overrides.get("vocab_size") == "auto":
                overrides["vocab_size"] = padded_vocab_rows(vocab)
            model_config = getattr(K2Config, config.model.preset)(**overrides)
        if config.model.rope_theta is not None:
            model_config.rope_parameters = {**model_config.rope_parameters, "rope_theta": float(config.model.rope_theta)}
        if config.model.max_position_embeddings is not None:
            model_config.max_position_embeddings = config.model.max_position_embeddings
        if model_config.vocab_size < vocab:
            raise TrainConfigError(
                f"model vocab_size {model_config.vocab_size} < tokenizer size {vocab}: set model.overrides.vocab_size"
            )
        if model_config.max_position_embeddings < self.data.seq_len:
            raise TrainConfigError(
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
            removed = clean_partial_saves(self.ckpt_root)
            if removed:
                self.accelerator.print(f"removed partial checkpoint saves from a crash: {removed}")
        self.accelerator.wait_for_everyone()
        resume = latest_checkpoint(self.ckpt_root)
        if resume is not None:
            self.accelerator.load_state(str(resume / TRAINING_STATE_DIR))
            self.state = TrainerState.from_json((resume / TRAINER_STATE).read_text())
            self.total_steps = self._planned_steps(self.state.order)
            if self.accelerator.is_main_process:
                if self.state.data_log_lines is not None:
                    self.data_log.truncate_to_lines(self.state.data_log_lines)
                else:  # checkpoints written before data_log_lines existed
                    self.data_log.truncate_after(self.state.global_step)
                self.metrics.truncate_after(self.state.global_step)
            self.accelerator.print(f"resumed from {resume.name} at step {self.state.global_step}")
        elif self.accelerator.is_main_process:  # a fresh start: nothing of an earlier, checkpoint-less try is kept
            for log in (self.data_log, self.metrics, self.rolled_back):
                log.truncate_to_lines(0)
            self.data_log.append({"step": 0, "event": "start", "order": list(self.state.order),
                                  "data": str(self.data.path.resolve())})
        self.accelerator.init_trackers(self.config.log.project, config=_flat_config(self.config.to_dict()))

    def rows_for_step(self, chunk: int, step_in_chunk: int) -> tuple[int, int, np.ndarray]:
        """This rank's row indices for one step, plus the global (ordered) row range the whole step consumes."""
        g = self.geometry
        start = step_in_chunk * g.global_rows
        rank = self.accelerator.process_index
        key = (chunk, tuple(self.state.reseeds.get(str(chunk), ())))
        if getattr(self, "_order_key", None) != key:
            self._order_key = key
            self._order = row_order(self.data.manifest["chunks"][chunk]["rows"], g.global_rows,
                                    self.state.reseeds.get(str(chunk)))
        mine = self._order[start + rank * g.rows_per_rank : start + (rank + 1) * g.rows_per_rank]
        return start, start + g.global_rows, mine

    def batch_rows(self, chunk: int, rows: np.ndarray) -> np.ndarray:
        """Token rows for the given row indices (hook: the spike drill substitutes poison here)."""
        return self.data.chunk(chunk).tokens[rows]

    def train_step(self, chunk: int, rows: np.ndarray) -> tuple[float, float]:
        """One optimizer step over this rank's rows (gradient accumulation inside); returns (loss, grad norm)."""
        g = self.geometry
        losses = []
        grad_norm = None
        for i in range(g.grad_accum):
            micro = rows[i * g.micro_batch_size : (i + 1) * g.micro_batch_size]
            batch = torch.from_numpy(self.batch_rows(chunk, micro).astype(np.int64)).to(self.accelerator.device)
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

    def train(self) -> TrainerState:
        """Run (or resume) until the data sequence or ``max_steps`` is exhausted; returns the final state."""
        self.setup()
        acc, g = self.accelerator, self.geometry
        self.bar = tqdm(total=self.total_steps, initial=self.state.global_step, desc="pretrain", unit="step",
                        disable=not acc.is_main_process)
        peak = device_peak_tflops(self.config.log.peak_tflops)
        while not self._done():
            state = self.state  # re-read every step: a rollback replaces it
            if state.order_pos >= len(state.order):
                break
            chunk = state.order[state.order_pos]
            steps = self.steps_in_chunk(chunk)
            if state.step_in_chunk >= steps:
                self._finish_chunk(chunk, steps)
                continue
            if self._skipped(chunk, state.step_in_chunk):
                row_start, row_end, _ = self.rows_for_step(chunk, state.step_in_chunk)
                state.skipped_rows.setdefault(str(chunk), []).append([row_start, row_end])
                self.data_log.append({"step": state.global_step, "event": "skip", "chunk": chunk,
                                     "rows": [row_start, row_end]})
                state.step_in_chunk += 1
                continue
            row_start, row_end, rows = self.rows_for_step(chunk, state.step_in_chunk)
            started = time.perf_counter()
            loss, grad_norm = self.train_step(chunk, rows)
            elapsed = time.perf_counter() - started
            state.global_step += 1
            state.step_in_chunk += 1
            state.tokens_seen += g.global_rows * g.seq_len
            tokens_per_s = g.global_rows * g.seq_len / elapsed
            record = {
                "step": state.global_step, "loss": loss, "grad_norm": grad_norm,
                "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
                "mfu": (tokens_per_s * self.flops_per_token / acc.num_processes / (peak * 1e12)) if peak else None,
                "peak_mem_gb": peak_memory_gb(), "chunk": chunk,
                "seconds": elapsed, "processes": acc.num_processes,  # device time of the step (energy reports)
            }
            entry = {"step": state.global_step, "chunk": chunk, "order_pos": state.order_pos, "rows": [row_start, row_end]}
            if str(chunk) in state.reseeds:  # positions are no longer row numbers: record the rows themselves
                entry["row_ids"] = self._order[row_start:row_end].tolist()
            self.data_log.append(entry)
            self.metrics.append(record)
            acc.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=state.global_step)
            self.bar.update()
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            if self.on_step(record):
                continue  # the hook rolled back (or halted): state and position changed
            every = self.config.checkpoint.every_steps
            if every and state.global_step % every == 0 and state.step_in_chunk < steps:
                self.checkpoint(step_checkpoint_name(state.global_step))
        self.bar.close()
        if acc.is_main_process:
            self.plot_curves()
        acc.end_training()
        return self.state

    def on_step(self, record: dict) -> bool:
        """Hook after every step (spike detection); return True when it changed the training position."""
        return False

    def spike_spans(self) -> list[dict]:
        """Spans to shade in the training-curve plot (spike-aware trainers override)."""
        return []

    def _skipped(self, chunk: int, step_in_chunk: int) -> bool:
        return any(a <= step_in_chunk < b for a, b in self.state.skip_steps.get(str(chunk), []))

    def _done(self) -> bool:
        return bool(self.config.max_steps) and self.state.global_step >= self.config.max_steps

    def _finish_chunk(self, chunk: int, steps: int) -> None:
        state = self.state
        rows = self.data.manifest["chunks"][chunk]["rows"]
        used = steps * self.geometry.global_rows
        if used < rows:
            state.skipped_rows.setdefault(str(chunk), []).append([used, rows])
        entry = {"step": state.global_step, "event": "chunk_end", "chunk": chunk, "order_pos": state.order_pos,
                 "rows_trained": used, "rows_not_trained": [used, rows]}
        if str(chunk) in state.reseeds:
            self.rows_for_step(chunk, 0)  # make sure the cached order is this chunk's
            entry["row_ids_not_trained"] = self._order[used:rows].tolist()
        self.data_log.append(entry)
        name = chunk_checkpoint_name(state.order_pos + 1)
        state.order_pos += 1
        next_chunk = state.order[state.order_pos] if state.order_pos < len(state.order) else None
        state.step_in_chunk = state.resume_steps.pop(str(next_chunk), 0)
        self.checkpoint(name)

    def checkpoint(self, name: str) -> Path:
        self.state.data_log_lines = self.data_log.line_count()
        path = save_checkpoint(self.accelerator, self.model, self.tokenizer, self.state, self.ckpt_root, name)
        if self.accelerator.is_main_process:
            cfg = self.config.checkpoint
            apply_retention(self.ckpt_root, cfg.keep_chunk_checkpoints, cfg.keep_step_checkpoints, protect={name})
            self.plot_curves()
        return path

    def plot_curves(self) -> Path | None:
        return plot_training_curves(self.metrics.read(), self.output_dir / CURVES, self.spike_spans(),
                                    self.rolled_back.read(), title=f"K2 pretraining ({self.output_dir.name})")


def reset_accelerate_state() -> None:
    """Forget the process-wide accelerate state, so another run (or an SFT trainer) can start in this process."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def row_order(rows: int, global_rows: int, reseed: list[int] | None) -> np.ndarray:
    """Row order inside a chunk: as written (already shuffled by prepare); after a `reseed` rollback the rows
    from step ``from_step`` on are re-shuffled with the new seed (rows before it were already trained)."""
    order = np.arange(rows)
    if reseed:
        from_step, seed = reseed
        cut = from_step * global_rows
        order[cut:] = np.random.default_rng(seed).permutation(order[cut:])
    return order


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
