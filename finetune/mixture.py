"""Deterministic mixture sampling: draw each source's target count from its valid conversations."""

from __future__ import annotations

import numpy as np


def target_count(target: int | None, weight: float | None, total: int | None, weights_sum: float,
                 available: int) -> int:
    """Conversations to draw: the explicit target, a share of ``total`` by weight, or everything available."""
    if target is not None:
        return target
    if weight is not None:
        return int(round(total * weight / weights_sum)) if weights_sum > 0 else 0
    return available


def sample_indices(available: int, count: int, seed: int) -> np.ndarray:
    """``count`` indices into ``available`` items: without replacement when down-sampling; when up-sampling every
    item ``count // available`` times plus a random remainder. Returned in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    if available == 0 or count == 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(count, available)
    picked = [np.tile(np.arange(available), full), rng.choice(available, size=rest, replace=False)]
    indices = np.concatenate(picked)
    return indices[rng.permutation(len(indices))]
