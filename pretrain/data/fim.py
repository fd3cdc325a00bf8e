"""Fill-in-the-middle, as StarCoder trained it (and K2 on its code data).

A document is cut at two uniformly random character positions into prefix / middle / suffix and re-ordered:

* PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``
* SPM: ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle`` (StarCoder's SPM variant)

The eos that ends every document follows, as for plain documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_FIM, PSM, SPM = 0, 1, 2


@dataclass(frozen=True)
class FimTokenIds:
    prefix: int
    middle: int
    suffix: int


def fim_decisions(rng: np.random.Generator, n: int, rate: float, spm_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Per document: the FIM mode (NO_FIM / PSM / SPM) and two uniform cut fractions, drawn in one go."""
    use_fim = rng.random(n) < rate
    use_spm = rng.random(n) < spm_rate
    cuts = np.sort(rng.random((n, 2)), axis=1)
    modes = np.where(use_fim, np.where(use_spm, SPM, PSM), NO_FIM).astype(np.int8)
    return modes, cuts


def split_text(text: str, cuts: np.ndarray) -> tuple[str, str, str]:
    """Prefix, middle, suffix at the two cut fractions (character positions in ``[0, len]``)."""
    n = len(text)
    first, second = (min(int(c * (n + 1)), n) for c in cuts)
    return text[:first], text[first:second], text[second:]


def assemble(mode: int, prefix: list[int], middle: list[int], suffix: list[int], ids: FimTokenIds) -> list[int]:
    """Token ids of one FIM document (without the trailing eos)."""
    if mode == PSM:
        return [ids.prefix, *prefix, ids.suffix, *suffix, ids.middle, *middle]
    return [ids.prefix, ids.suffix, *suffix, ids.middle, *prefix, *middle]
