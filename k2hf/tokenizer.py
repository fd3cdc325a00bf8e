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
import shutil
import weakref
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from .errors import UserError

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


def k2_chat_template() -> str:
    """The K2-Chat Jinja template (with ``{% generation %}`` markers around each reply and its eos)."""
    return resources.files("k2hf").joinpath("templates/k2_chat.jinja").read_text(encoding="utf-8")


def apply_chat_template_to(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Install the K2-Chat template on any K2 tokenizer (e.g. one loaded from a Hub K2 checkpoint); returns it.
    How conversations are encoded under it lives in :mod:`k2hf.chat_template`."""
    chat_tokens = (END_OF_SYSTEM_PROMPT, BEGIN_OF_SYSTEM, BEGIN_OF_USER, END_OF_CHAT)
    missing = [t for t in chat_tokens if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"not a K2 tokenizer: missing chat tokens {missing} (build one with k2hf.build_k2_tokenizer)")
    tokenizer.chat_template = k2_chat_template()
    return tokenizer


def padded_vocab_rows(num_tokens: int, multiple: int = 32) -> int:
    """Embedding rows for ``num_tokens`` tokens, rounded up as K2 does (32022 tokens -> 32032 rows)."""
    return -(-num_tokens // multiple) * multiple


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
    backend, sp_model = _backend_from_base(base)
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
    if sp_model is not None:
        tokenizer.vocab_file = str(sp_model)  # what from_pretrained sets when tokenizer.model sits beside the json
    if chat_template:
        apply_chat_template_to(tokenizer)
    return tokenizer


def _backend_from_base(base: Any) -> tuple[Tokenizer, Path | None]:
    if isinstance(base, (str, os.PathLike)):
        path = _find_sp_model(Path(base))
        return sentencepiece_bpe_to_tokenizers(path), path
    sp_model = sentencepiece_model_of(base)
    if sp_model is not None:
        return sentencepiece_bpe_to_tokenizers(sp_model), sp_model
    backend = getattr(base, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"cannot build a K2 tokenizer from {type(base).__name__}: pass a tokenizer.model path")
    return Tokenizer.from_str(backend.to_str()), None


def sentencepiece_model_of(tokenizer: Any) -> Path | None:
    """The SentencePiece ``tokenizer.model`` a tokenizer was built or loaded with, if it has one."""
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if vocab_file and str(vocab_file).endswith(".model") and Path(vocab_file).is_file():
        return Path(vocab_file)
    return None


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike) -> None:
    """``save_pretrained`` plus the SentencePiece ``tokenizer.model`` beside ``tokenizer.json`` (as LLaMA repos ship
    it; ``from_pretrained`` picks it up again), so bulk encoding can keep using SentencePiece downstream."""
    tokenizer.save_pretrained(directory)
    sp_model = sentencepiece_model_of(tokenizer)
    target = Path(directory) / SP_MODEL_FILE
    if sp_model is not None and not (target.exists() and target.samefile(sp_model)):
        shutil.copyfile(sp_model, target)


class MissingTokenizerModel(UserError, FileNotFoundError):
    """No SentencePiece ``tokenizer.model`` where one was expected."""


def _find_sp_model(path: Path) -> Path:
    if path.is_dir():
        path = path / SP_MODEL_FILE
    if not path.is_file():
        raise MissingTokenizerModel(f"no SentencePiece model at {path}: give LLaMA's tokenizer.model (or its folder)")
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


class PlainTextEncoder:
    """Bulk ids of untrusted plain text: control-token strings stay text, nothing is added (no BOS/EOS).

    Uses SentencePiece itself when the tokenizer's ``tokenizer.model`` is known and agrees with it, else the
    ``tokenizers`` backend (``encode_batch_fast`` with ``encode_special_tokens=True``). Why: K2's pretraining data
    was tokenized with SentencePiece, whose C++ encoder gives the same ids 1.4-1.8x faster than the
    ``tokenizers`` pipeline on this model (it builds no ``Encoding`` objects, token strings or offsets; see
    BENCHMARKS.md); data preparation and SFT packing spend most of their time here. Agreement is checked when
    the encoder is built: the SentencePiece vocabulary must equal the tokenizer's base vocabulary piece for
    piece, every added token must be special, and a probe set (whitespace runs, unicode, byte fallback,
    control-token strings, code) must encode identically.
    """

    def __init__(self, backend: Tokenizer, sp_model: str | os.PathLike | None = None) -> None:
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.encode_special_tokens = True
        self.sentencepiece = None
        if sp_model is not None:
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=str(sp_model))
            if self._agrees(processor):
                self.sentencepiece = processor

    def _agrees(self, processor) -> bool:
        if not all(token.special for token in self.backend.get_added_tokens_decoder().values()):
            return False  # a non-special added token is matched in text by `tokenizers`, never by SentencePiece
        size = processor.get_piece_size()
        vocab = self.backend.get_vocab(with_added_tokens=False)
        if len(vocab) != size or any(vocab.get(processor.id_to_piece(i)) != i for i in range(size)):
            return False
        return processor.encode(list(_PROBES)) == self._encode_backend(list(_PROBES))

    def _encode_backend(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking, which we never use (~30% faster); older tokenizers lack it
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        if self.sentencepiece is not None:
            return self.sentencepiece.encode(list(texts), num_threads=1)
        return self._encode_backend(list(texts))


_PROBES = (
    "Hello world", " Hello", "  two  spaces", "trailing   ", "   ", "", "\n\nleading newlines", "\tindented\ttabs\t",
    "def f(x):\n    return x\n", "if (a && b) { return a->c[0]; }", "日本語のテキスト", "émoji 🤖🎉 mixed",
    "a\u00a0b\u200bc\u3000d", "12345 67.89 -0.001", "\r\nCRLF\r\n", "ʻOkina and ǂ click", "x" * 200, "▁literal▁marks",
    "<s> </s> <unk> <fim_prefix> <|beginofuser|> <|endofchat|> <jupyter_code>", "\x00\x07 control chars \ufffd",
)

_PLAIN_TEXT_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plain_text_encoder(tokenizer: PreTrainedTokenizerBase) -> PlainTextEncoder:
    """The :class:`PlainTextEncoder` of a fast tokenizer, built once per tokenizer (rebuilt if tokens are added)."""
    backend = tokenizer.backend_tokenizer
    key = (backend.get_vocab_size(with_added_tokens=True), sentencepiece_model_of(tokenizer))
    cached = _PLAIN_TEXT_ENCODERS.get(tokenizer)
    if cached is None or cached[0] != key:
        cached = _PLAIN_TEXT_ENCODERS[tokenizer] = (key, PlainTextEncoder(backend, key[1]))
    return cached[1]


def encode_plain_text(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Encode untrusted text: control-token strings (``<|beginofuser|>``, ``</s>``, ...) stay plain text.

    Same ids as ``tokenizer(texts, add_special_tokens=False, split_special_tokens=True)``, without building a
    ``BatchEncoding`` or tracking offsets, through SentencePiece when the tokenizer has its ``tokenizer.model``
    (see :class:`PlainTextEncoder`).
    """
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return plain_text_encoder(tokenizer)(texts)


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
    "PlainTextEncoder",
    "build_k2_tokenizer",
    "encode_plain_text",
    "padded_vocab_rows",
    "plain_text_encoder",
    "save_tokenizer",
    "sentencepiece_model_of",
    "sentencepiece_bpe_to_tokenizers",
]
