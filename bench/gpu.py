"""GPU benchmark: K2ForCausalLM against stock transformers LlamaForCausalLM, same config and weights, one process.

The cases are those of the stock-Llama anchor measurements (``../shared/bench/anchor_gpu.py``):

* ``train``: a 1B K2-shaped model (hidden 2048, 16 layers, 16 heads, MLP 5504, vocab 32032), seq 2048, micro-batch
  8, bf16 autocast over fp32 weights, AdamW; eager and ``torch.compile``;
* ``packed``: the same model on packed 8K SFT rows (16 documents per row, ``position_ids`` restarting), micro-batch 2,
  sdpa and flex attention;
* ``layer``: one K2-65B decoder layer (hidden 8192, 64 heads, MLP 22016), forward + backward in bf16, seq 2048 / 8192;
* ``generate``: greedy generation, batch 1, 128-token prompt, 256 new tokens, dynamic and static cache.

Per case and model: tokens/s (new tokens/s for generation), MFU (dense bf16 peak of the device), peak memory, and
then K2/stock ratios and a numerics check: the same first-step loss (training), the same layer output, the same
greedy tokens, within bf16 tolerance. The two models never share the device: K2 runs, is freed, then stock Llama is
built from K2's saved weights and runs.

    python bench/gpu.py                 # on an H100/H200: every case (~10 min)
    python bench/gpu.py train packed    # some cases
    python bench/gpu.py --smoke         # every case at tiny size on CPU (what the test suite runs)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from k2hf.conversion import k2_to_llama_config
from k2hf.modeling import K2_VOCAB_ROWS, K2Config, K2ForCausalLM
from k2hf.modeling.modeling_k2 import K2DecoderLayer, K2RotaryEmbedding
from k2hf.pretrain.monitoring import device_peak_tflops, flops_per_token

LOSS_RTOL = 2e-2  # bf16 autocast: the two models round differently only where their LM-head losses are computed
LAYER_ATOL = 5e-2  # bf16 outputs of one layer
CASES = ("train", "packed", "layer", "generate")


@dataclass
class Sizes:
    """Model and batch sizes; ``full()`` is the anchor's, ``smoke()`` runs everything on a CPU in seconds."""

    hidden: int = 2048
    layers: int = 16
    heads: int = 16
    vocab: int = K2_VOCAB_ROWS
    seq: int = 2048
    micro_batch: int = 8
    packed_seq: int = 8192
    packed_micro_batch: int = 2
    packed_docs: int = 16
    layer_hidden: int = 8192
    layer_heads: int = 64
    layer_mlp: int = 22016
    layer_seqs: tuple[int, ...] = (2048, 8192)
    prompt: int = 128
    new_tokens: int = 256
    steps: int = 8
    warmup: int = 3

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(hidden=64, layers=2, heads=4, vocab=512, seq=64, micro_batch=2, packed_seq=128,
                   packed_micro_batch=2, packed_docs=4, layer_hidden=128, layer_heads=4, layer_mlp=344,
                   layer_seqs=(64, 128), prompt=8, new_tokens=8, steps=2, warmup=1)

    def k2_config(self, attn: str = "sdpa", seq: int | None = None) -> K2Config:
        mlp = int(self.hidden * 22016 / 8192)
        return K2Config(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=mlp - mlp % 64 or mlp,
                        num_hidden_layers=self.layers, num_attention_heads=self.heads,
                        num_key_value_heads=self.heads, max_position_embeddings=max(seq or 0, self.packed_seq, 2048),
                        attn_implementation=attn)


@dataclass
class Bench:
    """Device, timing and memory helpers shared by the cases."""

    device: torch.device
    peak_tflops: float | None
    results: list[dict] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def median_seconds(self, fn: Callable[[], object], steps: int, warmup: int) -> float:
        times = []
        for _ in range(warmup + steps):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times[warmup:])

    def mfu(self, flops_per_second: float) -> float | None:
        return round(flops_per_second / (self.peak_tflops * 1e12), 3) if self.peak_tflops else None

    def record(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        self.results.append(row)


def packed_positions(rows: int, seq: int, docs: int, generator: torch.Generator) -> torch.Tensor:
    """Documents of random lengths back to back in each row; positions restart at every document."""
    out = []
    for _ in range(rows):
        cuts = sorted((torch.randperm(seq - 1, generator=generator)[: docs - 1] + 1).tolist())
        bounds = [0, *cuts, seq]
        out.append(torch.cat([torch.arange(b - a) for a, b in zip(bounds, bounds[1:])]))
    return torch.stack(out)


def build_pair(config: K2Config, which: str, k2_state: dict | None) -> torch.nn.Module:
    """K2 (seeded init) or stock Llama carrying K2's weights."""
    if which == "k2":
        torch.manual_seed(0)
        return K2ForCausalLM(config)
    model = LlamaForCausalLM(k2_to_llama_config(config))
    model.load_state_dict(k2_state)
    return model


def train_case(bench: Bench, name: str, config: K2Config, rows: int, seq: int, sizes: Sizes, packed_docs: int = 0,
               compile_model: bool = False) -> None:
    """Optimizer steps (bf16 autocast, fp32 weights, AdamW, clipping) for K2, then for stock Llama."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (rows, seq), generator=generator)
    inputs = {"input_ids": ids, "labels": ids, "use_cache": False}
    if packed_docs:
        inputs["position_ids"] = packed_positions(rows, seq, packed_docs, generator)
    inputs = {k: v.to(bench.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    # CPU flex attention has no backward (torch limit): the smoke run times its forward only
    backward = bench.cuda or config._attn_implementation != "flex_attention"
    per_model, k2_state = {}, None
    for which in ("k2", "stock"):
        bench.reset_memory()
        try:
            model = build_pair(config, which, k2_state).to(bench.device).train()
            if which == "k2":
                k2_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            fused = {"fused": True} if bench.cuda else {}
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **fused)
            forward = torch.compile(model) if compile_model else model
            first_loss = []

            def step(forward=forward, model=model, optimizer=optimizer, first_loss=first_loss):
                with torch.autocast(bench.device.type, dtype=torch.bfloat16), torch.set_grad_enabled(backward):
                    loss = forward(**inputs).loss
                if not first_loss:
                    first_loss.append(loss.item())
                if backward:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

            seconds = bench.median_seconds(step, sizes.steps, sizes.warmup)
            tokens_per_s = rows * seq / seconds
            row = {"case": name, "model": which, "tokens_per_s": round(tokens_per_s, 1),
                   "mfu": bench.mfu(tokens_per_s * flops_per_token(config, seq)), "step_s": round(seconds, 4),
                   "peak_gib": bench.peak_gib(), "first_loss": round(first_loss[0], 5), "backward": backward}
        except Exception as error:  # one failing case (e.g. out of memory) must not lose the others
            row = {"case": name, "model": which, "error": f"{type(error).__name__}: {str(error)[:300]}"}
        per_model[which] = row
        bench.record(row)
        model = optimizer = forward = None
    compare(bench, name, per_model, "tokens_per_s",
            lambda k2, stock: abs(k2["first_loss"] - stock["first_loss"]) <= LOSS_RTOL * abs(stock["first_loss"]))


def layer_case(bench: Bench, sizes: Sizes, seq: int) -> None:
    """One K2-65B decoder layer, forward + backward in bf16: K2DecoderLayer vs LlamaDecoderLayer, same weights."""
    name = f"layer_h{sizes.layer_hidden}_seq{seq}"
    config = K2Config(hidden_size=sizes.layer_hidden, intermediate_size=sizes.layer_mlp, num_hidden_layers=1,
                      num_attention_heads=sizes.layer_heads, num_key_value_heads=sizes.layer_heads,
                      max_position_embeddings=max(seq, 2048), attn_implementation="sdpa")
    llama_config = k2_to_llama_config(config)
    llama_config._attn_implementation = "sdpa"
    x = torch.randn(1, seq, sizes.layer_hidden, generator=torch.Generator().manual_seed(2))
    x = x.to(bench.device, torch.bfloat16).requires_grad_(True)
    positions = torch.arange(seq, device=bench.device)[None]
    flops = seq * (6 * (4 * sizes.layer_hidden**2 + 3 * sizes.layer_hidden * sizes.layer_mlp)
                   + 12 * sizes.layer_hidden * seq)
    per_model, outputs, k2_state = {}, {}, None
    for which in ("k2", "stock"):
        bench.reset_memory()
        try:
            torch.manual_seed(0)
            if which == "k2":
                layer, rope = K2DecoderLayer(config, 0), K2RotaryEmbedding(config)
                k2_state = layer.state_dict()
            else:
                layer, rope = LlamaDecoderLayer(llama_config, 0), LlamaRotaryEmbedding(llama_config)
                layer.load_state_dict(k2_state)
            layer, rope = layer.to(bench.device, torch.bfloat16), rope.to(bench.device)
            embeddings = rope(x, positions)

            def step(layer=layer, embeddings=embeddings, which=which):
                out = layer(x, attention_mask=None, position_embeddings=embeddings, position_ids=positions)
                out = out[0] if isinstance(out, tuple) else out
                outputs[which] = out.detach().float().cpu()
                out.float().square().mean().backward()

            seconds = bench.median_seconds(step, sizes.steps, sizes.warmup)
            row = {"case": name, "model": which, "tflops": round(flops / seconds / 1e12, 4),
                   "mfu": bench.mfu(flops / seconds), "step_s": round(seconds, 4), "peak_gib": bench.peak_gib()}
        except Exception as error:
            row = {"case": name, "model": which, "error": f"{type(error).__name__}: {str(error)[:300]}"}
        per_model[which] = row
        bench.record(row)
        layer = rope = None
    compare(bench, name, per_model, "tflops",
            lambda k2, stock: (outputs["k2"] - outputs["stock"]).abs().max().item() <= LAYER_ATOL)


def generate_case(bench: Bench, sizes: Sizes, static: bool) -> None:
    """Greedy generation, batch 1, bf16 weights: new tokens per second, and the same tokens from both models."""
    name = f"generate_{'static' if static else 'dynamic'}_bs1"
    config = sizes.k2_config()
    prompt = torch.randint(3, config.vocab_size, (1, sizes.prompt), generator=torch.Generator().manual_seed(3))
    prompt = prompt.to(bench.device)
    kwargs = {"max_new_tokens": sizes.new_tokens, "min_new_tokens": sizes.new_tokens, "do_sample": False,
              "attention_mask": torch.ones_like(prompt), "pad_token_id": 0}
    if static:
        kwargs["cache_implementation"] = "static"
    per_model, tokens, k2_state = {}, {}, None
    for which in ("k2", "stock"):
        bench.reset_memory()
        try:
            model = build_pair(config, which, k2_state)
            if which == "k2":
                k2_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model = model.to(bench.device, torch.bfloat16).eval()

            def run(model=model, which=which):
                with torch.no_grad():
                    tokens[which] = model.generate(prompt, **kwargs)[0, sizes.prompt:].cpu()

            seconds = bench.median_seconds(run, steps=1, warmup=2 if bench.cuda else 1)
            row = {"case": name, "model": which, "tokens_per_s": round(sizes.new_tokens / seconds, 1),
                   "step_s": round(seconds, 4), "peak_gib": bench.peak_gib()}
        except Exception as error:
            row = {"case": name, "model": which, "error": f"{type(error).__name__}: {str(error)[:300]}"}
        per_model[which] = row
        bench.record(row)
        model = None
    compare(bench, name, per_model, "tokens_per_s", lambda k2, stock: torch.equal(tokens["k2"], tokens["stock"]))


def compare(bench: Bench, name: str, per_model: dict, speed: str, numerics_ok: Callable[[dict, dict], bool]) -> None:
    k2, stock = per_model["k2"], per_model["stock"]
    if "error" in k2 or "error" in stock:
        bench.record({"case": name, "compare": "skipped: a model failed"})
        return
    memory = k2.get("peak_gib") and stock.get("peak_gib") and round(k2["peak_gib"] / stock["peak_gib"], 3)
    bench.record({"case": name, "compare": "k2/stock", "speed_ratio": round(k2[speed] / stock[speed], 3),
                  "memory_ratio": memory, "numerics_ok": bool(numerics_ok(k2, stock))})


def run(cases: list[str], smoke: bool) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    sizes = Sizes.smoke() if smoke else Sizes()
    bench = Bench(device, device_peak_tflops(None) if device.type == "cuda" else None)
    if "train" in cases:
        for compiled in (False, True):
            train_case(bench, f"train_seq{sizes.seq}_mb{sizes.micro_batch}{'_compile' if compiled else ''}",
                       sizes.k2_config(), sizes.micro_batch, sizes.seq, sizes, compile_model=compiled)
    if "packed" in cases:
        for attn in ("sdpa", "flex_attention"):
            train_case(bench, f"packed{sizes.packed_seq}_{sizes.packed_docs}docs_{attn}_mb{sizes.packed_micro_batch}",
                       sizes.k2_config(attn, sizes.packed_seq), sizes.packed_micro_batch, sizes.packed_seq, sizes,
                       packed_docs=sizes.packed_docs)
    if "layer" in cases:
        for seq in sizes.layer_seqs:
            layer_case(bench, sizes, seq)
    if "generate" in cases:
        for static in (False, True):
            generate_case(bench, sizes, static)
    return bench.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="every case at tiny size on CPU")
    parser.add_argument("--out", type=Path, help="also write every row to this JSON file")
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    import transformers

    header = {"torch": torch.__version__, "transformers": transformers.__version__, "smoke": args.smoke,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"}
    print(json.dumps(header), flush=True)
    results = run(args.cases or list(CASES), args.smoke)
    if args.out:
        args.out.write_text(json.dumps({**header, "results": results}, indent=1))
    print("\n| case | K2 | stock | K2/stock speed | K2/stock memory | numerics |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    rows = {(r["case"], r.get("model", "compare")): r for r in results}
    for case in dict.fromkeys(r["case"] for r in results):
        k2, stock, cmp = rows.get((case, "k2"), {}), rows.get((case, "stock"), {}), rows.get((case, "compare"), {})
        speed = lambda r: r.get("error") or r.get("tokens_per_s") or r.get("tflops")  # noqa: E731
        print(f"| {case} | {speed(k2)} | {speed(stock)} | {cmp.get('speed_ratio')} | {cmp.get('memory_ratio')} | "
              f"{cmp.get('numerics_ok', cmp.get('compare'))} |")


if __name__ == "__main__":
    main()
