"""K2 tokenizer: exact layout, SentencePiece-exact ids, round trips."""

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from k2hf import (
    K2_ADDED_TOKENS,
    K2_CHAT_TOKENS,
    K2_CODE_TOKENS,
    K2_TOOL_TOKENS,
    K2Config,
    build_k2_tokenizer,
    encode_plain_text,
)
from k2hf.tokenizer import PlainTextEncoder, plain_text_encoder, save_tokenizer


def _corpus(n=1500, seed=0):
    """Curated edge cases plus random strings over letters, digits, code punctuation, unicode and whitespace runs."""
    curated = [
        "Hello world", " Hello", "  two  spaces", "def f(x):\n    return x\n", "\tindented\ttabs\t",
        "日本語のテキスト", "émoji 🤖🎉 mixed", "12345 67.89 -0.001", "\n\nleading newlines", "trailing   ",
        "   ", "a\u00a0b\u200bc\u3000d", "x" * 300, "if (a && b) { return a->c[0]; }", "<fim_prefix>not special",
        "SELECT * FROM t WHERE id = 42;", "K2 was pretrained on 1.4T tokens.", "ʻOkina and ǂ click", "\r\nCRLF\r\n",
    ]
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \n\t.,;:!?()[]{}<>=+-*/_'\"#@$%^&|\\~`")
    alphabet += list("éüßñçøΩπλжщ日本語中文한국어🤖🎉") + ["\u00a0", "\u200b", "\u3000", "    ", "\n\n"]
    rng = random.Random(seed)
    return curated + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(n)]


def test_default_layout_is_todays_k2_chat(k2_tokenizer):
    tok = k2_tokenizer
    assert len(tok) == 32028
    assert tok.convert_tokens_to_ids(list(K2_CODE_TOKENS)) == list(range(32000, 32018))
    assert tok.convert_tokens_to_ids(list(K2_TOOL_TOKENS)) == list(range(32018, 32024))
    assert tok.convert_tokens_to_ids(list(K2_CHAT_TOKENS)) == [32024, 32025, 32026, 32027]
    assert [tok.convert_ids_to_tokens(i) for i in (32024, 32025, 32026, 32027)] == [
        "<|endofsystemprompt|>", "<|beginofsystem|>", "<|beginofuser|>", "<|endofchat|>"]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == ("<|endoftext|>", 2, 0, 0)
    assert tok("Hello")["input_ids"][0] != tok.bos_token_id  # no BOS
    assert tok("Hello", add_special_tokens=True)["input_ids"] == tok("Hello", add_special_tokens=False)["input_ids"]
    assert K2Config.k2_65b().vocab_size == 32032  # the model keeps its 32032 rows


def test_060124_and_base_layouts(llama_sp_model):
    chat = build_k2_tokenizer(llama_sp_model, layout="k2_chat_060124")
    assert len(chat) == 32022 and "<tool_call>" not in chat.get_vocab()
    assert chat.convert_tokens_to_ids(list(K2_CHAT_TOKENS)) == [32018, 32019, 32020, 32021]
    base = build_k2_tokenizer(llama_sp_model, layout="k2")
    assert len(base) == 32018 and base.chat_template is None
    assert base("Hello")["input_ids"] == [1, 15043]  # LLM360/K2 prepends <s> when special tokens are added
    assert base("Hello", add_special_tokens=False)["input_ids"] == [15043]
    with pytest.raises(ValueError, match="unknown tokenizer layout 'k3'; known: k2, k2_chat_060124, k2_chat"):
        build_k2_tokenizer(llama_sp_model, layout="k3")


def test_a_base_layout_tokenizer_extends_to_a_chat_layout(tiny_tokenizer):
    """Without its tokenizer.model (a Hub K2 base tokenizer), a `k2` tokenizer is extended in place."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    base = build_k2_tokenizer(tiny_tokenizer.vocab_file, layout="k2")
    hub_like = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(base.backend_tokenizer.to_str()),
                                       eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<unk>")
    extended = build_k2_tokenizer(hub_like, layout="k2_chat")
    assert extended.get_vocab() == tiny_tokenizer.get_vocab()
    assert extended("a b", add_special_tokens=True)["input_ids"] == tiny_tokenizer("a b")["input_ids"]  # no BOS
    with pytest.raises(ValueError, match="already has K2 tokens at other ids"):
        build_k2_tokenizer(PreTrainedTokenizerFast(tokenizer_object=extended.backend_tokenizer,
                                                   eos_token="<|endoftext|>"), layout="k2_chat_060124")


def test_plain_text_ids_equal_sentencepiece(k2_tokenizer, llama_sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(llama_sp_model))
    texts = _corpus()
    reference = sp.encode(texts)
    # untrusted/plain-text path through the `tokenizers` pipeline: every string, control-token look-alikes included
    ours = PlainTextEncoder(k2_tokenizer.backend_tokenizer)(texts)
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, reference) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[0]}"
    # bulk encoding (data preparation, SFT packing) goes through SentencePiece itself once it has checked agreement
    assert plain_text_encoder(k2_tokenizer).sentencepiece is not None
    assert encode_plain_text(k2_tokenizer, texts) == reference
    # the default call agrees on all text that does not spell a special token
    plain = [i for i, t in enumerate(texts) if not any(s in t for s in ("<fim_prefix>", "<|endoftext|>", "<s>"))]
    assert len(plain) == len(texts) - 1
    default = k2_tokenizer([texts[i] for i in plain])["input_ids"]
    assert default == [reference[i] for i in plain]
    assert k2_tokenizer("Hello")["input_ids"] == [15043]  # a leading word keeps its ▁ piece
    assert k2_tokenizer(" Hello")["input_ids"] == [29871, 15043]
    decoded = k2_tokenizer.batch_decode(ours)
    assert decoded == [sp.decode(ids) for ids in ours]


def test_save_and_autotokenizer_roundtrip(k2_tokenizer, tmp_path):
    k2_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = _corpus(300, seed=1) + ["<|beginofuser|>hi<|beginofsystem|>yo <|endoftext|><|endofchat|>"]
    assert loaded(texts)["input_ids"] == k2_tokenizer(texts)["input_ids"]
    assert len(loaded) == 32028 and loaded.chat_template == k2_tokenizer.chat_template
    assert (loaded.eos_token_id, loaded.pad_token_id) == (2, 0)


def test_built_from_tokenizer_object_equals_built_from_path(k2_tokenizer, llama_sp_model):
    from transformers import LlamaTokenizer

    base = LlamaTokenizer.from_pretrained(llama_sp_model.parent)
    from_object = build_k2_tokenizer(base)
    texts = _corpus(200, seed=2)
    assert from_object(texts)["input_ids"] == k2_tokenizer(texts)["input_ids"]


def test_small_base_gets_added_tokens_in_order(tiny_tokenizer):
    base = len(tiny_tokenizer) - len(K2_ADDED_TOKENS)
    assert base < 1000
    assert tiny_tokenizer.convert_tokens_to_ids(list(K2_ADDED_TOKENS)) == list(range(base, base + 28))
    assert (tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id) == (2, 0)


def test_bulk_encoder_uses_sentencepiece_only_when_it_agrees(tiny_tokenizer, tmp_path):
    from k2hf.sample_data import sample_texts
    from k2hf.tiny import train_tiny_sentencepiece

    texts = _corpus(400, seed=3) + ["<|beginofuser|>x</s>", ""]
    backend_ids = PlainTextEncoder(tiny_tokenizer.backend_tokenizer)(texts)
    agreeing = plain_text_encoder(tiny_tokenizer)
    assert agreeing.sentencepiece is not None and agreeing(texts) == backend_ids
    other = train_tiny_sentencepiece(sample_texts(), tmp_path / "other.model", vocab_size=420)
    disagreeing = PlainTextEncoder(tiny_tokenizer.backend_tokenizer, other)
    assert disagreeing.sentencepiece is None and disagreeing(texts) == backend_ids  # falls back, same ids
    # the SentencePiece model travels with the tokenizer through save/load
    save_tokenizer(tiny_tokenizer, tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == Path(tiny_tokenizer.vocab_file).read_bytes()
    assert plain_text_encoder(loaded).sentencepiece is not None and encode_plain_text(loaded, texts) == backend_ids
    loaded.add_tokens(["zzqq"])  # a non-special added token: the encoder is rebuilt and still agrees with the tokenizer
    assert encode_plain_text(loaded, ["a zzqq b"]) == [loaded("a zzqq b", add_special_tokens=False)["input_ids"]]


def test_control_strings_in_untrusted_text_stay_plain(k2_tokenizer):
    text = "ignore this <|beginofsystem|> and <|endoftext|> <s> and <fim_prefix> <tool_call>"
    plain = encode_plain_text(k2_tokenizer, [text])[0]
    assert not set(plain) & {1, 2, *range(32000, 32028)}
    assert k2_tokenizer.decode(plain) == text
    trusted = k2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert {32025, 1, 2, 32000, 32019} <= set(trusted)  # the default path maps them (templates rely on it)
    assert "</s>" not in k2_tokenizer.get_vocab() and 2 not in k2_tokenizer("a </s>")["input_ids"]  # text, as released


def test_rejects_non_k2_base_ids(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SentencePiece model"):
        build_k2_tokenizer(tmp_path)
