"""K2's tokenizer: the LLaMA SentencePiece BPE plus 18 StarCoder code tokens and 4 K2-Chat control tokens.

``build_k2_tokenizer`` returns a ``tokenizers``-backed (fast) transformers tokenizer whose plain-text encoding
is exactly the SentencePiece model's (K2's pretraining data was tokenized with SentencePiece itself, with the
dummy-prefix ``▁`` on every document and no BOS).

Why not ``LlamaTokenizer.from_pretrained(dir_with_tokenizer.model)``: transformers 5 converts the model with a
``Metaspace(prepend_scheme="first")`` pre-tokenizer and vocabulary-ordered merges. That differs from
SentencePiece on leading and repeated whitespace (``" Hello"``, indented code), i.e. on ids K2 was trained on.
Here the merges are ordered by SentencePiece piece score, the dummy prefix is a ``Prepend("▁")`` normalizer and
text is pre-split into whitespace-led pieces as SentencePiece does, which reproduces SentencePiece's BPE exactly
and applies the prefix to every text span between control tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

SP_MODEL_FILE = "tokenizer.model"

#: StarCoder's code tokens, ids 32000-32017 in K2 (this order).
K2_CODE_TOKENS: tuple[str, ...] = (
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<empty_output>",
    "<commit_before>",
    "<commit_msg>",
    "<commit_after>",
    "<reponame>",
)

END_OF_SYSTEM_PROMPT = "<|endofsystemprompt|>"
BEGIN_OF_SYSTEM = "<|beginofsystem|>"  # starts an assistant ("system" in K2's naming) reply
BEGIN_OF_USER = "<|beginofuser|>"
END_OF_CHAT = "<|endofchat|>"

#: K2-Chat control tokens, ids 32018-32021 in K2 (this order).
K2_CHAT_TOKENS: tuple[str, ...] = (END_OF_SYSTEM_PROMPT, BEGIN_OF_SYSTEM, BEGIN_OF_USER, END_OF_CHAT)
K2_ADDED_TOKENS: tuple[str, ...] = K2_CODE_TOKENS + K2_CHAT_TOKENS

EOS_ID = 2
PAD_ID = 0
UNK_ID = 0


def build_k2_tokenizer(base: str | os.PathLike | PreTrainedTokenizerBase, chat_template: bool = True):
    """Build K2's fast tokenizer from a LLaMA-style SentencePiece BPE tokenizer.

    Args:
        base: path to a SentencePiece ``tokenizer.model``, a directory holding one, or a tokenizer object. An
            object that remembers its ``vocab_file`` is rebuilt from that file (exact SentencePiece ids);
            any other fast tokenizer is extended as it is.
        chat_template: also install the K2-Chat chat template (:func:`k2hf.apply_chat_template_to`).

    Returns:
        A ``PreTrainedTokenizerFast`` with the base vocabulary, then the 18 code tokens and the 4 chat tokens
        (ids 32000-32021 on the LLaMA base), eos ``</s>`` (id 2), pad = unk = id 0, and no BOS added.
    """
    backend = _backend_from_base(base)
    base_size = backend.get_vocab_size(with_added_tokens=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
        padding_side="right",
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in K2_ADDED_TOKENS], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(K2_ADDED_TOKENS))
    if ids != list(range(base_size, base_size + len(K2_ADDED_TOKENS))):
        raise ValueError(f"base tokenizer already contains some K2 tokens; got ids {ids} for {K2_ADDED_TOKENS}")
    if tokenizer.eos_token_id != EOS_ID or tokenizer.pad_token_id != PAD_ID:
        raise ValueError(
            f"base tokenizer must have <unk>=0, <s>=1, </s>=2 like LLaMA; got eos={tokenizer.eos_token_id}, "
            f"unk/pad={tokenizer.pad_token_id}"
        )
    if chat_template:
        from .chat_template import apply_chat_template_to

        apply_chat_template_to(tokenizer)
    return tokenizer


def _backend_from_base(base: Any) -> Tokenizer:
    if isinstance(base, (str, os.PathLike)):
        return sentencepiece_bpe_to_tokenizers(_find_sp_model(Path(base)))
    vocab_file = getattr(base, "vocab_file", None)
    if vocab_file and Path(vocab_file).is_file() and str(vocab_file).endswith(".model"):
        return sentencepiece_bpe_to_tokenizers(Path(vocab_file))
    backend = getattr(base, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"cannot build a K2 tokenizer from {type(base).__name__}: pass a tokenizer.model path")
    return Tokenizer.from_str(backend.to_str())


def _find_sp_model(path: Path) -> Path:
    if path.is_dir():
        path = path / SP_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no SentencePiece model at {path}")
    return path


def sentencepiece_bpe_to_tokenizers(model_file: str | os.PathLike) -> Tokenizer:
    """Convert a SentencePiece BPE model (byte fallback, dummy prefix) into an id-exact ``tokenizers.Tokenizer``."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ValueError(f"{model_file}: K2's tokenizer is a SentencePiece BPE model, not a unigram/word model")
    norm = proto.normalizer_spec
    if norm.remove_extra_whitespaces:
        raise ValueError(f"{model_file}: remove_extra_whitespaces=True is not LLaMA's SentencePiece setting")

    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    scores = {piece.piece: piece.score for piece in proto.pieces}
    merges = generate_merges(vocab, scores)  # ordered by SentencePiece score = SentencePiece's merge order
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    backend = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback)
    )
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    backend.normalizer = normalizers.Sequence(steps)
    # SentencePiece's own pre-split (split_by_whitespace with whitespace-only pieces allowed): a piece is a run of
    # "▁" plus the word that follows. Same ids as BPE over the whole text, but words hit the BPE cache (~30% faster).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    strip = [decoders.Strip(content=" ", left=1)] if norm.add_dummy_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    # SentencePiece control/unknown pieces (<unk>, <s>, </s>) are special tokens, never produced from text.
    control = sentencepiece_model_pb2.ModelProto.SentencePiece
    specials = [p.piece for p in proto.pieces if p.type in (control.CONTROL, control.UNKNOWN)]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return backend


def encode_plain_text(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Encode untrusted text: control-token strings (``<|beginofuser|>``, ``</s>``, ...) stay plain text.

    Same as ``tokenizer(texts, add_special_tokens=False, split_special_tokens=True)``, which flips the same
    switch on the Rust tokenizer, but without building a ``BatchEncoding`` or tracking offsets (2x faster on
    the SFT packer's hot path).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


__all__ = [
    "BEGIN_OF_SYSTEM",
    "BEGIN_OF_USER",
    "END_OF_CHAT",
    "END_OF_SYSTEM_PROMPT",
    "EOS_ID",
    "K2_ADDED_TOKENS",
    "K2_CHAT_TOKENS",
    "K2_CODE_TOKENS",
    "PAD_ID",
    "build_k2_tokenizer",
    "encode_plain_text",
    "sentencepiece_bpe_to_tokenizers",
]
