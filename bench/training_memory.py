"""Benchmark one training step's peak memory: K2ForCausalLM (chunked loss) vs stock LlamaForCausalLM (CPU).

Same config (hidden 1024, 2 layers, 16 heads, MLP 2816, vocab 32032, fp32), same weights, batch 1, seq 8192,
one forward + backward with ``labels`` (no optimizer). Each model runs in its own process; the figure is the
step's peak resident memory above what the process held just before the step (model, inputs), read from
``ru_maxrss``. A third process runs K2 with ``chunked_loss=False`` to show where the difference comes from.

    python bench/training_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = ("k2_chunked_loss", "k2_plain_loss", "stock_llama")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_case(case: str, seq: int, threads: int) -> dict:
    """One forward + backward in this process; returns the step's memory and time."""
    import torch
    from transformers import LlamaForCausalLM

    from k2hf.conversion import k2_to_llama_config
    from k2hf.modeling import K2_VOCAB_ROWS, K2Config, K2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = K2Config(vocab_size=K2_VOCAB_ROWS, hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
                      num_key_value_heads=16, intermediate_size=2816, max_position_embeddings=seq,
                      chunked_loss=case != "k2_plain_loss")
    if case == "stock_llama":
        model = LlamaForCausalLM(k2_to_llama_config(config))
    else:
        model = K2ForCausalLM(config)
    model.train()
    ids = torch.randint(0, K2_VOCAB_ROWS, (1, seq), generator=torch.Generator().manual_seed(0))
    before = _rss_mb()
    assert _peak_mb() < before + 64, "model construction peaked above the step's baseline"
    start = time.perf_counter()
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    seconds = time.perf_counter() - start
    return {"case": case, "step_peak_mb": round(_peak_mb() - before, 1), "baseline_mb": round(before, 1),
            "seconds": round(seconds, 2), "loss": round(out.loss.item(), 6),
            "lm_head_grad_norm": round(model.lm_head.weight.grad.norm().item(), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.seq, args.threads)))
        return
    results = {}
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--seq", str(args.seq),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[case]), flush=True)
    chunked, stock = results["k2_chunked_loss"], results["stock_llama"]
    print(json.dumps({"peak_ratio_k2_over_stock": round(chunked["step_peak_mb"] / stock["step_peak_mb"], 3),
                      "loss_rel_diff": abs(chunked["loss"] - stock["loss"]) / abs(stock["loss"]),
                      "lm_head_grad_norm_rel_diff": abs(chunked["lm_head_grad_norm"] - stock["lm_head_grad_norm"])
                      / stock["lm_head_grad_norm"]}))


if __name__ == "__main__":
    main()
