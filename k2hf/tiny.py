"""Tiny K2 tokenizers and models for tests, demos and notebooks (CPU, seconds).

The tokenizer is a real SentencePiece BPE trained like LLaMA's (byte fallback, split digits, dummy prefix,
identity normalization) on a few texts, then extended by :func:`k2hf.build_k2_tokenizer`: the 22 K2 tokens
follow its base vocabulary in K2's order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from .modeling import K2Config, K2ForCausalLM
from .tokenizer import build_k2_tokenizer, padded_vocab_rows


def train_tiny_sentencepiece(texts: Iterable[str], out_file: str | os.PathLike, vocab_size: int = 400) -> Path:
    """Train a LLaMA-style SentencePiece BPE model (unk=0, bos=1, eos=2, byte fallback) on ``texts``."""
    import sentencepiece as spm

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "sp"),
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
        out_file.write_bytes((Path(tmp) / "sp.model").read_bytes())
    return out_file


def build_tiny_tokenizer(work_dir: str | os.PathLike, texts: Iterable[str] | None = None, vocab_size: int = 400):
    """A K2 tokenizer over a tiny SentencePiece base trained on ``texts`` (default: the bundled samples)."""
    if texts is None:
        from .sample_data import sample_texts

        texts = sample_texts()
    model_file = train_tiny_sentencepiece(texts, Path(work_dir) / "tokenizer.model", vocab_size=vocab_size)
    return build_k2_tokenizer(model_file)


def build_tiny_k2(tokenizer, seed: int = 0, **config_overrides) -> K2ForCausalLM:
    """A randomly initialised tiny K2 sized for ``tokenizer`` (deterministic for a given seed)."""
    config = K2Config.tiny(vocab_size=padded_vocab_rows(len(tokenizer)), **config_overrides)
    torch.manual_seed(seed)
    return K2ForCausalLM(config)


__all__ = ["build_tiny_k2", "build_tiny_tokenizer", "train_tiny_sentencepiece"]
