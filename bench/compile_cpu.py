"""Benchmark torch.compile on CPU: eager vs compiled training steps of a small K2 (tokens/s).

K2ForCausalLM with hidden 256, 4 layers, 8 heads, MLP 688, vocab 32032, fp32, AdamW; micro-batch 4 x 512 tokens of
packed rows (4 documents per row, position_ids restarting), sdpa. Eager and ``torch.compile(model)`` run in the same
process from the same initial weights; compilation is excluded (the first steps are warm-up) and reported apart.

    python bench/compile_cpu.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from k2hf.modeling import K2_VOCAB_ROWS, K2Config, K2ForCausalLM

    config = K2Config(vocab_size=K2_VOCAB_ROWS, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=8, intermediate_size=688, max_position_embeddings=512,
                      attn_implementation="sdpa")
    ids = torch.randint(3, K2_VOCAB_ROWS, (4, 512), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(n) for n in (200, 150, 100, 62)]).expand(4, -1)
    inputs = {"input_ids": ids, "labels": ids, "position_ids": positions, "use_cache": False}
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = K2ForCausalLM(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward = torch.compile(model) if compiled else model
        times, losses[compiled] = [], []
        for _ in range(args.warmup + args.steps):
            start = time.perf_counter()
            loss = forward(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            losses[compiled].append(loss.item())
        seconds = statistics.median(times[args.warmup:])
        print(json.dumps({"mode": "compiled" if compiled else "eager", "tokens_per_s": round(ids.numel() / seconds),
                          "step_s": round(seconds, 4), "first_steps_s": round(sum(times[: args.warmup]), 1),
                          "threads": args.threads}), flush=True)
    drift = max(abs(a - b) for a, b in zip(losses[True], losses[False]))
    print(json.dumps({"max_loss_difference_over_run": drift, "steps": args.warmup + args.steps}))


if __name__ == "__main__":
    main()
