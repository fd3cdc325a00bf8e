"""K2's tokenizers: the LLaMA SentencePiece BPE plus the tokens of a released layout (:mod:`k2hf.token_layouts`).

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

import json
import os
import shutil
import weakref
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from .errors import UserError
from .token_layouts import (
    BEGIN_OF_SYSTEM,
    BEGIN_OF_USER,
    BOS_ID,
    DEFAULT_LAYOUT,
    END_OF_CHAT,
    END_OF_SYSTEM_PROMPT,
    EOS_ID,
    EOS_TOKEN,
    K2_CHAT_TOKENS,
    K2_CODE_TOKENS,
    K2_TOOL_TOKENS,
    LAYOUTS,
    LEGACY_EOS_TOKEN,
    PAD_ID,
    LayoutError,
    detect_layout,
    get_layout,
)

SP_MODEL_FILE = "tokenizer.model"

#: Every token k2hf's default layout adds after the base vocabulary (:data:`DEFAULT_LAYOUT`, in id order).
K2_ADDED_TOKENS: tuple[str, ...] = LAYOUTS[DEFAULT_LAYOUT].added_tokens


def k2_chat_template(tools: bool = True, eos_glue: str = " ") -> str:
    """The K2-Chat Jinja template (``{% generation %}`` markers around each reply, its calls and its eos).

    Args:
        tools: the tokenizer has K2-Chat's tool tokens (``tools=``, ``tool_calls`` and ``role: "tool"`` work;
            without them they are an error).
        eos_glue: written between reply text and eos. The released tokenizers' id 2 is a *normalized* added
            token, matched only at the start of a text piece or after a space (its normalized form is
            ``▁<|endoftext|>``); so the template writes ``"reply <|endoftext|>"``, which tokenizes to the reply's
            ids + id 2, exactly what :func:`k2hf.encode_chat` builds. ``""`` for an eos that is not normalized.
    """
    from .tool_format import TOOLS_INTRO, TOOLS_OUTRO

    text = resources.files("k2hf").joinpath("templates/k2_chat.jinja").read_text(encoding="utf-8")
    values = {"@HAS_TOOL_TOKENS@": "true" if tools else "false", "@EOS_GLUE@": json.dumps(eos_glue),
              "@TOOLS_INTRO@": json.dumps(TOOLS_INTRO), "@TOOLS_OUTRO@": json.dumps(TOOLS_OUTRO)}
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def apply_chat_template_to(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Install the K2-Chat template on any K2 chat tokenizer (either chat layout, a tokenizer loaded from a Hub
    K2-Chat checkpoint, or one from an earlier k2hf), fitted to how its eos token matches; returns it.
    How conversations are encoded under it lives in :mod:`k2hf.chat_template`."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in K2_CHAT_TOKENS if t not in vocab]
    if missing:
        raise LayoutError(f"not a K2 chat tokenizer: missing chat tokens {missing} (build one with `k2hf tokenizer "
                          "BASE OUT --layout k2_chat` or k2hf.build_k2_tokenizer)")
    eos = tokenizer.added_tokens_decoder.get(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else None
    glue = " " if eos is not None and eos.normalized else ""
    tokenizer.chat_template = k2_chat_template(tools=all(t in vocab for t in K2_TOOL_TOKENS), eos_glue=glue)
    return tokenizer


def padded_vocab_rows(num_tokens: int, multiple: int = 32) -> int:
    """Embedding rows for ``num_tokens`` tokens, rounded up as K2 does (32022 or 32028 tokens -> 32032 rows)."""
    return -(-num_tokens // multiple) * multiple


def build_k2_tokenizer(base: str | os.PathLike | PreTrainedTokenizerBase, layout: str = DEFAULT_LAYOUT,
                       chat_template: bool = True):
    """Build one of K2's released tokenizers from a LLaMA-style SentencePiece BPE tokenizer.

    Args:
        base: path to a SentencePiece ``tokenizer.model``, a directory holding one, or a tokenizer object. An
            object that remembers its ``vocab_file`` is rebuilt from that file (exact SentencePiece ids); any
            other fast tokenizer is extended as it is (tokens of the layout it already has must sit at the
            layout's ids, e.g. a ``k2`` tokenizer extended to ``k2_chat``).
        layout: ``"k2"``, ``"k2_chat_060124"`` or ``"k2_chat"`` (:mod:`k2hf.token_layouts`).
        chat_template: install the K2-Chat template (:func:`k2hf.apply_chat_template_to`) on chat layouts.

    Returns:
        A ``PreTrainedTokenizerFast`` with the released file's tokens, ids and flags on the LLaMA base: id 2 named
        ``<|endoftext|>`` (eos, normalized), ``<unk>`` = pad = 0, ``<s>`` = 1 (not special; prepended by the
        ``k2`` layout only), then the layout's added tokens.
    """
    spec = get_layout(layout)
    backend, sp_model = _backend_from_base(base)
    eos_name = EOS_TOKEN if backend.token_to_id(EOS_TOKEN) == EOS_ID else LEGACY_EOS_TOKEN  # an old k2hf base
    base_size = backend.token_to_id(K2_CODE_TOKENS[0]) or backend.get_vocab_size(with_added_tokens=True)
    present = {t: backend.token_to_id(t) for t in spec.added_tokens if backend.token_to_id(t) is not None}
    expected = spec.ids(base_size)
    wrong = {t: i for t, i in present.items() if i != expected[t]}
    foreign = [t for t in (*K2_TOOL_TOKENS, *K2_CHAT_TOKENS) if t not in expected and backend.token_to_id(t)]
    if wrong or foreign or (present and backend.get_vocab_size(with_added_tokens=True) != base_size + len(present)):
        raise LayoutError(f"the base tokenizer already has K2 tokens at other ids than layout {layout!r} gives them "
                          f"({wrong or foreign}); build from LLaMA's tokenizer.model instead")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.added_tokens
                                if t not in present])
    if backend.token_to_id(eos_name) != EOS_ID or backend.token_to_id("<unk>") != PAD_ID \
            or backend.token_to_id("<s>") != BOS_ID:
        raise LayoutError("the base tokenizer must have <unk>=0, <s>=1 and </s> or <|endoftext|> = 2 like LLaMA's")
    single, pair = ("<s>:0 $A:0", "<s>:0 $A:0 <s>:1 $B:1") if spec.adds_bos else ("$A:0", "$A:0 $B:1")
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", BOS_ID)] if spec.adds_bos else [])
    # the named special tokens as the backend's own AddedToken objects, so ids 0-2 keep the released flags
    flags = backend.get_added_tokens_decoder()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=flags[BOS_ID],
        eos_token=flags[EOS_ID],
        unk_token=flags[PAD_ID],
        pad_token=flags[PAD_ID],
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
        padding_side="right",
    )
    if sp_model is not None:
        tokenizer.vocab_file = str(sp_model)  # what from_pretrained sets when tokenizer.model sits beside the json
    if chat_template and spec.has_chat:
        apply_chat_template_to(tokenizer)
    return tokenizer


#: Ids 0-2 as every released K2 tokenizer has them (names and flags), replacing SentencePiece's control pieces.
K2_CONTROL_TOKENS: dict[int, AddedToken] = {
    PAD_ID: AddedToken("<unk>", special=True, normalized=True),
    BOS_ID: AddedToken("<s>", special=False, normalized=False),
    EOS_ID: AddedToken(EOS_TOKEN, special=True, normalized=True),
}


def _backend_from_base(base: Any) -> tuple[Tokenizer, Path | None]:
    if isinstance(base, (str, os.PathLike)):
        path = _find_sp_model(Path(base))
        return sentencepiece_bpe_to_tokenizers(path, K2_CONTROL_TOKENS), path
    sp_model = sentencepiece_model_of(base)
    if sp_model is not None:
        return sentencepiece_bpe_to_tokenizers(sp_model, K2_CONTROL_TOKENS), sp_model
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
    """``save_pretrained`` plus what other readers of a checkpoint need.

    * the SentencePiece ``tokenizer.model`` beside ``tokenizer.json`` (as LLaMA repos ship it; ``from_pretrained``
      picks it up again), so bulk encoding can keep using SentencePiece downstream;
    * ``added_tokens_decoder``, ``add_bos_token`` and ``add_eos_token`` in ``tokenizer_config.json`` (transformers
      5 no longer writes them): llama.cpp's ``convert_hf_to_gguf.py`` reads added tokens only from there (or
      ``added_tokens.json``) and adds a BOS K2 never had unless ``add_bos_token`` says otherwise.
    """
    tokenizer.save_pretrained(directory)
    write_converter_fields(directory)
    sp_model = sentencepiece_model_of(tokenizer)
    target = Path(directory) / SP_MODEL_FILE
    if sp_model is not None and not (target.exists() and target.samefile(sp_model)):
        shutil.copyfile(sp_model, target)


def write_converter_fields(directory: str | os.PathLike) -> None:
    """Add ``added_tokens_decoder``, ``add_bos_token`` and ``add_eos_token`` to ``tokenizer_config.json``, read
    from the ``tokenizer.json`` beside it (what :func:`save_tokenizer` and ``k2hf export`` write)."""
    directory = Path(directory)
    config_file, tokenizer_file = directory / "tokenizer_config.json", directory / "tokenizer.json"
    if not (config_file.is_file() and tokenizer_file.is_file()):
        return
    backend = Tokenizer.from_file(str(tokenizer_file))
    config = json.loads(config_file.read_text(encoding="utf-8"))
    with_special, plain = backend.encode("a").ids, backend.encode("a", add_special_tokens=False).ids
    config["add_bos_token"] = with_special[:1] == [BOS_ID] and plain[:1] != [BOS_ID]
    config["add_eos_token"] = with_special[-1:] == [EOS_ID] and plain[-1:] != [EOS_ID]
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(backend.get_added_tokens_decoder().items())}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class MissingTokenizerModel(UserError, FileNotFoundError):
    """No SentencePiece ``tokenizer.model`` where one was expected."""


def _find_sp_model(path: Path) -> Path:
    if path.is_dir():
        path = path / SP_MODEL_FILE
    if not path.is_file():
        raise MissingTokenizerModel(f"no SentencePiece model at {path}: give LLaMA's tokenizer.model (or its folder)")
    return path


def sentencepiece_bpe_to_tokenizers(model_file: str | os.PathLike,
                                    control_tokens: Mapping[int, AddedToken] | None = None) -> Tokenizer:
    """Convert a SentencePiece BPE model (byte fallback, dummy prefix) into an id-exact ``tokenizers.Tokenizer``.

    ``control_tokens`` renames SentencePiece's control/unknown pieces by id and sets their added-token flags
    (default: their own names, special, not normalized)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ValueError(f"{model_file}: K2's tokenizer is a SentencePiece BPE model, not a unigram/word model")
    norm = proto.normalizer_spec
    if norm.remove_extra_whitespaces:
        raise ValueError(f"{model_file}: remove_extra_whitespaces=True is not LLaMA's SentencePiece setting")

    control = sentencepiece_model_pb2.ModelProto.SentencePiece
    is_control = [p.type in (control.CONTROL, control.UNKNOWN) for p in proto.pieces]
    names = [p.piece for p in proto.pieces]
    control_tokens = dict(control_tokens or {})
    for i, token in control_tokens.items():
        if not is_control[i]:
            raise ValueError(f"{model_file}: piece {i} ({names[i]!r}) is not a control piece; cannot rename it")
        names[i] = token.content
    vocab = {name: i for i, name in enumerate(names)}
    scores = {name: piece.score for name, piece in zip(names, proto.pieces)}
    merges = generate_merges(vocab, scores)  # ordered by SentencePiece score = SentencePiece's merge order
    unk = names[proto.trainer_spec.unk_id]
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
    # SentencePiece control/unknown pieces (<unk>, <s>, </s>) are added tokens, never produced from text by BPE.
    added = [control_tokens.get(i, AddedToken(name, special=True, normalized=False))
             for i, name in enumerate(names) if is_control[i]]
    backend.add_special_tokens([t for t in added if t.special])  # (this call would mark every token special)
    backend.add_tokens([t for t in added if not t.special])
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
        # K2's own tokens special in this copy, so none is matched in text (the released `<s>` is not special);
        # other non-special added tokens are vocabulary words a user added, and stay matched
        self.backend.add_special_tokens([AddedToken(t.content, special=True, normalized=t.normalized)
                                         for t in self.backend.get_added_tokens_decoder().values()
                                         if not t.special and t.content in _K2_TOKEN_NAMES])
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
        # control pieces (ids 0-2) never come out of text; K2 renames </s>
        if len(vocab) != size or any(vocab.get(processor.id_to_piece(i)) != i for i in range(size)
                                     if not (processor.is_control(i) or processor.is_unknown(i))):
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


_K2_TOKEN_NAMES = frozenset(
    {"<unk>", "<s>", LEGACY_EOS_TOKEN, EOS_TOKEN, *(t for layout in LAYOUTS.values() for t in layout.added_tokens)})

_PROBES = (
    "Hello world", " Hello", "  two  spaces", "trailing   ", "   ", "", "\n\nleading newlines", "\tindented\ttabs\t",
    "def f(x):\n    return x\n", "if (a && b) { return a->c[0]; }", "日本語のテキスト", "émoji 🤖🎉 mixed",
    "a\u00a0b\u200bc\u3000d", "12345 67.89 -0.001", "\r\nCRLF\r\n", "ʻOkina and ǂ click", "x" * 200, "▁literal▁marks",
    "<s> </s> <unk> <|endoftext|> <fim_prefix> <|beginofuser|> <|endofchat|> <jupyter_code>",
    "<tool_call> <tools> </tool_response>", "\x00\x07 control chars \ufffd",
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
    "DEFAULT_LAYOUT",
    "EOS_ID",
    "EOS_TOKEN",
    "K2_ADDED_TOKENS",
    "K2_CHAT_TOKENS",
    "K2_CODE_TOKENS",
    "K2_TOOL_TOKENS",
    "LAYOUTS",
    "LayoutError",
    "PAD_ID",
    "PlainTextEncoder",
    "build_k2_tokenizer",
    "detect_layout",
    "encode_plain_text",
    "padded_vocab_rows",
    "plain_text_encoder",
    "save_tokenizer",
    "write_converter_fields",
    "sentencepiece_model_of",
    "sentencepiece_bpe_to_tokenizers",
]
