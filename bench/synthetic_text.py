"""Synthetic text with a realistic word-frequency profile, shared by the CPU benchmarks in `bench/`.

Word ranks follow Zipf's law (exponent 1.15) over 2M words: the head is the bundled samples' own words, most
frequent first, and the tail is pseudo-words built from syllables. 11% of words carry punctuation, 2% are numbers
and 3% of the gaps between words are newlines (which SentencePiece does not split on, as in real text).

Calibrated so tokenizer caches see about as many new words as on real text: counting distinct SentencePiece
pieces after the first 1e4 / 1e5 / 3e5 / 9e5 pieces gives 3.6K / 23K / 55K / 130K here and 2.2K / 15.6K /
40K / 121K on real technical prose (the Rust book, reference and guides as plain text). A generator that draws
from a few hundred words only (as these benchmarks first did) keeps every word in every cache, which flatters
any tokenizer pipeline that memoises.

    python bench/synthetic_text.py    # prints the calibration counts above
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

VOCABULARY = 2_000_000
ZIPF = 1.15
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr",
           "ch", "sh", "th", "pl", "gr", "br"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "io", "ai"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "st", "m", "x"]


class SyntheticText:
    """Deterministic (per seed) English-like text: ``SyntheticText(seed).text(n_words)``."""

    def __init__(self, seed: int = 0, vocabulary: int = VOCABULARY, zipf: float = ZIPF) -> None:
        from k2hf.sample_data import sample_texts

        self.rng = np.random.default_rng(seed)
        counts = Counter(w for t in sample_texts() for w in t.split())
        head = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        self.words = np.concatenate([np.array(head, dtype=object), self._pseudo_words(vocabulary - len(head))])
        weights = 1.0 / np.arange(1, len(self.words) + 1) ** zipf
        self.cdf = np.cumsum(weights / weights.sum())

    def _pseudo_words(self, n: int) -> np.ndarray:
        rng = self.rng

        def syllables(k: int) -> np.ndarray:
            parts = [np.array(options, dtype=object)[rng.integers(0, len(options), k)]
                     for options in (_ONSETS, _VOWELS, _CODAS)]
            return parts[0] + parts[1] + parts[2]

        words = syllables(n)
        length = rng.integers(1, 5, n)
        for extra in range(1, 4):
            longer = length > extra
            words[longer] = words[longer] + syllables(int(longer.sum()))
        return words

    def text(self, n_words: int) -> str:
        """``n_words`` words joined by spaces and the odd newline."""
        rng = self.rng
        words = self.words[np.minimum(np.searchsorted(self.cdf, rng.random(n_words)), len(self.words) - 1)]
        mark = rng.random(n_words)
        words = np.where(mark < 0.06, words + ",", np.where(mark < 0.11, words + ".", words))
        numbers = rng.random(n_words) < 0.02
        words[numbers] = rng.integers(0, 100_000, int(numbers.sum())).astype(str).astype(object)
        gaps = np.where(rng.random(n_words) < 0.03, "\n", " ").astype(object)
        return "".join((words + gaps).tolist()).strip()


def distinct_piece_curve(texts, marks=(10_000, 100_000, 300_000, 900_000)) -> list[tuple[int, int]]:
    """(pieces seen, distinct pieces) at each mark, splitting as SentencePiece does (whitespace-led pieces)."""
    piece = re.compile("▁*[^▁]+|▁+")
    seen: set[str] = set()
    count, curve, pending = 0, [], list(marks)
    for text in texts:
        for p in piece.findall("▁" + text.replace(" ", "▁")):
            count += 1
            seen.add(p)
            if pending and count >= pending[0]:
                curve.append((count, len(seen)))
                pending.pop(0)
        if not pending:
            break
    return curve


if __name__ == "__main__":
    generator = SyntheticText()
    print(distinct_piece_curve(generator.text(300) for _ in range(10_000)))
