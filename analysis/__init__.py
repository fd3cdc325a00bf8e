"""The research suite: study a training across its checkpoints (K2's 360, or a k2hf run's).

* :mod:`.run_record`: what a run actually did, replayed from its data-sequence log (chunk and exact rows behind
  every checkpoint, rollbacks included);
* :mod:`.order`: which chunk each checkpoint was trained on, and the reverse (preset, prepared data, run dir);
* :mod:`.memorization`: the LLM360 memorization score across checkpoints, with batched greedy decoding;
* :mod:`.evaluation`: lm-evaluation-harness on one checkpoint or a sweep over all of them (extra ``eval``);
* :mod:`.gallery`: every checkpoint's outputs on the same prompts and items, as one static HTML page;
* :mod:`.energy`: energy and carbon of a training (the K2 paper's factors, or a run's own step records);
* :mod:`.data_index`, :mod:`.search`, :mod:`.trace`, :mod:`.contamination`: an infini-gram index of the training
  rows' own ids (extra ``search``), searched for counts, occurrences, provenance and first checkpoints, tracing a
  model's output back to its training rows (OLMoTrace), and benchmark contamination across checkpoints;
* :mod:`.checkpoint_tasks`: the per-checkpoint analyses (eval sweep, memorization, gallery, trace) as one task per
  checkpoint on local workers, Slurm or Ray, merged into the same outputs as a sequential run;
* :mod:`.plots`: the PNGs.

Checkpoint listing and loading live in the core (:mod:`k2hf.checkpoints`); this layer reads prepared data and run
dirs through :mod:`k2hf.pretrain` and is imported by nothing but the CLI.
"""
