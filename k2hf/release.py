"""What LLM360 released for K2, as data: the training order of its chunks, its Hub names, its row format.

The order is K2's real one, as ``k2-train``'s ``main.py`` built it: chunks 0-15, then 32-37, then 44-51, then
every other chunk of 0..359 in ascending order; then the element at position 160 of that list moved to the end,
then (in the resulting list) the element at position 185 moved to the end. Those two are chunks 160 and 186,
restarted after K2's two malignant loss spikes. ``ckpt_N`` (N = 1..360) is the model after the N-th chunk.
"""

from __future__ import annotations

from collections.abc import Callable

K2_HUB_MODEL = "LLM360/K2"
K2_HUB_DATASET = "LLM360/K2Datasets"
K2_STAGE1_CHUNKS = 360
K2_ROW_TOKENS = 2048
K2_FIRST_CHUNKS = (range(0, 16), range(32, 38), range(44, 52))  # trained first, in this order
K2_MOVED_POSITIONS = (160, 185)  # positions moved to the end, one after the other (spike restarts)


def k2_chunk_order() -> list[int]:
    """The order K2's 360 stage-1 chunks were trained in (``order[N - 1]`` is the chunk behind ``ckpt_N``)."""
    first = [c for block in K2_FIRST_CHUNKS for c in block]
    order = first + [c for c in range(K2_STAGE1_CHUNKS) if c not in set(first)]
    for position in K2_MOVED_POSITIONS:
        order.append(order.pop(position))
    return order


ORDER_PRESETS: dict[str, Callable[[], list[int]]] = {"k2": k2_chunk_order}


def order_preset(name: str) -> list[int]:
    """A named chunk order (``k2``); unknown names raise ``KeyError`` listing the known ones."""
    if name not in ORDER_PRESETS:
        raise KeyError(f"unknown chunk-order preset {name!r}; known: {sorted(ORDER_PRESETS)}")
    return ORDER_PRESETS[name]()


def released_chunk_file(index: int) -> str:
    """File name of K2 data chunk ``index`` in ``LLM360/K2Datasets`` (no zero padding)."""
    return f"chunk_{index}.jsonl"


__all__ = [
    "K2_HUB_DATASET",
    "K2_HUB_MODEL",
    "K2_ROW_TOKENS",
    "K2_STAGE1_CHUNKS",
    "ORDER_PRESETS",
    "k2_chunk_order",
    "order_preset",
    "released_chunk_file",
]
