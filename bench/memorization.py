"""Benchmark memorization decoding: k2hf's batched greedy decoding vs a per-row `model.generate` loop (CPU).

Same model (a K2-shaped tiny model with K2's 32032 embedding rows, fp32), same rows (random ids; prompt = the
first 32 tokens, 32 greedy tokens), same threads. The per-row loop is what a straightforward script does:
`model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)` row after row. Token agreement
between the two is reported too (min_new_tokens masks eos, so a row whose greedy token is eos may differ).

    python bench/memorization.py --rows 256 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from k2hf.analysis.memorization import greedy_continuations, memorization_scores
    from k2hf.modeling import K2_VOCAB_ROWS, K2Config, K2ForCausalLM

    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.tiny(vocab_size=K2_VOCAB_ROWS)).eval()
    rows = torch.from_numpy(np.random.default_rng(0).integers(3, 32000, (args.rows, 64)))
    prompts, targets = rows[:, :32], rows[:, 32:]
    params = sum(p.numel() for p in model.parameters())

    start = time.perf_counter()
    batched = torch.cat([greedy_continuations(model, prompts[i : i + args.batch_size], 32)
                         for i in range(0, args.rows, args.batch_size)])
    batched_scores = memorization_scores(batched, targets)
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        looped = torch.cat([
            model.generate(p[None], attention_mask=torch.ones_like(p[None]), max_new_tokens=32, min_new_tokens=32,
                           do_sample=False, pad_token_id=0)[:, 32:]
            for p in prompts
        ])
    looped_scores = memorization_scores(looped, targets)
    looped_s = time.perf_counter() - start

    agree = float((batched == looped).float().mean())
    for method, seconds, scores in (("k2hf batched greedy", batched_s, batched_scores),
                                    ("per-row model.generate loop", looped_s, looped_scores)):
        print(json.dumps({"method": method, "rows": args.rows, "seconds": round(seconds, 3),
                          "rows_per_s": round(args.rows / seconds, 1), "mean_score": round(float(scores.mean()), 5),
                          "parameters": params, "threads": args.threads}))
    print(json.dumps({"speedup": round(looped_s / batched_s, 2), "token_agreement": agree}))


if __name__ == "__main__":
    main()
