"""``tokenization: k2_release``: documents -> ids the way K2's released rows were made (LLM360 k2-data-prep).

Per source file: each document's text gets the string ``</s>`` appended; the texts are split on single spaces
into one running word buffer across documents, emitted as windows of 4096 words joined by single spaces (a
window can start or end mid-document; the file's last window holds the remainder). Each window is cut at every
special-token string (``<s>``, ``</s>``, ``<unk>``, then the 18 code tokens, one after the other); special
pieces become their id and every other piece is encoded on its own without special tokens, so each gets the
tokenizer's leading-space treatment of a fresh text. Rows are then cut from the file's id stream across
documents (the remainder of a file is dropped), with no extra eos and no attention reset.

This differs from k2hf's default (each document encoded whole, SentencePiece ids, one eos id appended, special
strings inside documents kept as text): see the README for an example.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from k2hf.tokenizer import K2_CODE_TOKENS

WINDOW_WORDS = 4096
EOS_STRING = "</s>"
SPECIAL_STRINGS = ("<s>", "</s>", "<unk>", *K2_CODE_TOKENS)  # split in this order, as K2's tokenizer listed them


@dataclass(frozen=True)
class Piece:
    """A span of a window: special (``special`` = its string) or plain text, owned by one document."""

    text: str
    record: int
    special: bool


def windows(documents: Iterable[tuple[int, str]], window_words: int = WINDOW_WORDS
            ) -> Iterator[tuple[str, list[int], list[int]]]:
    """``(window text, word start offsets, owning record of each word)`` over one file's documents."""
    words: list[str] = []
    owners: list[int] = []
    for record, text in documents:
        split = (text + EOS_STRING).split(" ")
        words.extend(split)
        owners.extend([record] * len(split))
        while len(words) >= window_words:
            yield _window(words[:window_words], owners[:window_words])
            del words[:window_words], owners[:window_words]
    yield _window(words, owners)


def _window(words: list[str], owners: list[int]) -> tuple[str, list[int], list[int]]:
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    return " ".join(words), starts, owners


def split_window(window: str, starts: list[int], owners: list[int],
                 specials: tuple[str, ...] = SPECIAL_STRINGS) -> list[Piece]:
    """Cut ``window`` at every special string (one special after another, like the release code) and give each
    piece the document it belongs to. A plain piece that starts with the space joining two documents belongs
    to the next one (the previous one ended with ``</s>``, a cut)."""
    spans: list[tuple[int, int, bool]] = [(0, len(window), False)]
    for special in specials:
        cut: list[tuple[int, int, bool]] = []
        for start, end, is_special in spans:
            if is_special:
                cut.append((start, end, True))
                continue
            at = start
            while (hit := window.find(special, at, end)) >= 0:
                cut.append((at, hit, False))
                cut.append((hit, hit + len(special), True))
                at = hit + len(special)
            cut.append((at, end, False))
        spans = cut
    pieces = []
    for start, end, is_special in spans:
        if start == end:
            continue  # encodes to nothing
        anchor = start + 1 if window[start] == " " and start + 1 < len(window) else start
        pieces.append(Piece(window[start:end], owners[bisect_right(starts, anchor) - 1], is_special))
    return pieces


def encode_file(documents: Iterable[tuple[int, str]], encode_batch: Callable[[list[str]], list[list[int]]],
                special_ids: dict[str, int], window_words: int = WINDOW_WORDS) -> Iterator[tuple[list[int], int]]:
    """``(ids, record)`` for every piece of one file, in stream order (plain pieces encoded a window at a time)."""
    for window, starts, owners in windows(documents, window_words):
        pieces = split_window(window, starts, owners, tuple(special_ids))
        encoded = iter(encode_batch([p.text for p in pieces if not p.special]))
        for piece in pieces:
            yield ([special_ids[piece.text]] if piece.special else next(encoded)), piece.record


__all__ = ["EOS_STRING", "SPECIAL_STRINGS", "WINDOW_WORDS", "Piece", "encode_file", "split_window", "windows"]
