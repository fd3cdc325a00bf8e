"""k2hf's layouts against the tokenizer.json files LLM360 released (../shared/k2-tokenizers; skipped when absent).

Every added token (content, id, special, normalized), the ids of a corpus with and without special tokens, and
decoding; then everything k2hf encodes or renders working unchanged on a tokenizer loaded from the released file.
"""

import json
import random

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from conftest import REPO_ROOT
from k2hf import apply_chat_template_to, build_k2_tokenizer, detect_layout, encode_chat, encode_plain_text
from k2hf.tokenizer import save_tokenizer

RELEASED = REPO_ROOT.parent / "shared" / "k2-tokenizers"
FILES = {"k2": "LLM360-K2.tokenizer.json", "k2_chat": "LLM360-K2-Chat.tokenizer.json"}


def released_file(layout: str):
    path = RELEASED / FILES[layout]
    if not path.is_file():
        pytest.skip(f"released tokenizer not found at {path}")
    return path


def released(layout: str) -> PreTrainedTokenizerFast:
    """Loaded as the README of ../shared says (its tokenizer_config.json is not included)."""
    return PreTrainedTokenizerFast(tokenizer_file=str(released_file(layout)), eos_token="<|endoftext|>",
                                   unk_token="<unk>", pad_token="<unk>")


def _added(backend: Tokenizer) -> dict:
    return {i: (t.content, t.special, t.normalized, t.lstrip, t.rstrip, t.single_word)
            for i, t in backend.get_added_tokens_decoder().items()}


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    curated = [
        "Hello world", " Hello", "  two  spaces", "trailing   ", "   ", "\n\nx", "\tindented\ttabs\t",
        "def f(x):\n    return x\n", "日本語のテキスト", "émoji 🤖🎉 mixed", "a\u00a0b\u200bc\u3000d", "x" * 100,
        "</s>", "a </s> b", "<s>", "x<s>y", "<unk>", " <unk> ", "<|endoftext|>", "a <|endoftext|>", "a<|endoftext|>b",
        "<fim_prefix>def<fim_suffix>", "<|beginofuser|>hi<|beginofsystem|>", "<tool_call>{}</tool_call>",
        "<tools></tools><tool_response>", "<|endofchat|> <|endofsystemprompt|>", "\r\nCRLF\r\n", "▁literal",
    ]
    alphabet = list("abcdefghijklmnopqrstuvwxyz ABC0123 \n\t.,;:!?()[]{}<>=+-*/_'\"#|\\~") + ["</s>", "<s>",
                                                                                            "    ", "\u3000", "é"]
    rng = random.Random(seed)
    return curated + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.mark.parametrize("layout", ["k2", "k2_chat"])
def test_layout_reproduces_the_released_file(layout, llama_sp_model, tmp_path):
    path = released_file(layout)
    reference = Tokenizer.from_file(str(path))
    ours = build_k2_tokenizer(llama_sp_model, layout=layout)
    assert _added(ours.backend_tokenizer) == _added(reference)
    assert len(ours) == reference.get_vocab_size() == {"k2": 32018, "k2_chat": 32028}[layout]
    assert ours.get_vocab() == reference.get_vocab()
    texts = corpus()
    for add_special_tokens in (True, False):
        expected = [e.ids for e in reference.encode_batch(texts, add_special_tokens=add_special_tokens)]
        got = ours(texts, add_special_tokens=add_special_tokens)["input_ids"]
        assert got == expected, next((t, a, b) for t, a, b in zip(texts, got, expected) if a != b)
    ids = ours(texts)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == reference.decode_batch(ids, skip_special_tokens=skip)
    assert (ids[0][0] == 1) == (layout == "k2")  # only the base prepends <s>
    # what k2hf saves is the released file's content: same added tokens and ids after a save/load round trip
    save_tokenizer(ours, tmp_path)
    saved = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert _added(saved) == _added(reference)
    assert [e.ids for e in saved.encode_batch(texts)] == [e.ids for e in reference.encode_batch(texts)]


def test_detect_layout_on_released_files_and_every_built_layout(llama_sp_model):
    assert detect_layout(released("k2")) == "k2"
    assert detect_layout(released("k2_chat")) == "k2_chat"
    for layout in ("k2", "k2_chat_060124", "k2_chat"):
        assert detect_layout(build_k2_tokenizer(llama_sp_model, layout=layout)) == layout


def test_060124_layout_has_the_chat_tokens_where_the_earlier_release_had_them(llama_sp_model):
    tok = build_k2_tokenizer(llama_sp_model, layout="k2_chat_060124")
    base = Tokenizer.from_file(str(released_file("k2")))
    assert {i: t for i, t in _added(tok.backend_tokenizer).items() if i < 32018} == _added(base)
    assert [tok.convert_ids_to_tokens(i) for i in range(32018, 32022)] == [
        "<|endofsystemprompt|>", "<|beginofsystem|>", "<|beginofuser|>", "<|endofchat|>"]
    texts = [t for t in corpus(200, seed=1) if not any(c in t for c in ("<|beginof", "<|endof"))]
    assert len(texts) > 190
    assert tok(texts)["input_ids"] == [e.ids for e in base.encode_batch(texts, add_special_tokens=False)]


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are K2."}, {"role": "user", "content": "  indented\n\tcode"},
     {"role": "assistant", "content": "ok "}, {"role": "user", "content": "and?"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}],
]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "content": '{"sky": "sunny"}'}, {"role": "tool", "content": {"sky": "rain"}},
    {"role": "assistant", "content": "Paris sunny, Rome rain."},
]


def test_template_and_encode_chat_agree_on_the_released_k2_chat_tokenizer():
    tok = apply_chat_template_to(released("k2_chat"))
    cases = [(c, None, c[-1]["role"] != "assistant") for c in CONVERSATIONS] + [
        (TOOL_CONVERSATION, [WEATHER], False), (TOOL_CONVERSATION[:5], [WEATHER], True),
        ([{"role": "user", "content": "hi"}], [WEATHER], True)]
    for messages, tools, generation in cases:
        expected = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=generation, return_dict=True,
                                           return_assistant_tokens_mask=True)
        ours = encode_chat(tok, messages, tools=tools, add_generation_prompt=generation)
        assert ours["input_ids"] == expected["input_ids"]
        assert ours["assistant_masks"] == expected["assistant_masks"]
    ids = encode_chat(tok, CONVERSATIONS[0])["input_ids"]
    assert ids[-2:] == [2, 32027]  # a reply ends in id 2, then <|endofchat|>
    assert tok.apply_chat_template(CONVERSATIONS[0], return_dict=True)["input_ids"][-2:] == [2, 32027]


def test_plain_text_on_the_released_file_keeps_control_strings_as_text():
    tok = released("k2_chat")
    text = "a <s> b <|endoftext|> <unk> <tool_call> <|beginofuser|> </s>"
    ids = encode_plain_text(tok, [text])[0]
    assert not {0, 1, 2} & set(ids) and max(ids) < 32000
    assert tok.decode(ids) == text


def test_export_of_the_released_layout_writes_what_converters_read(tmp_path):
    tok = apply_chat_template_to(released("k2_chat"))
    save_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    decoder = config["added_tokens_decoder"]
    assert sorted(map(int, decoder)) == [0, 1, 2, *range(32000, 32028)] and decoder["32019"]["content"] == "<tool_call>"
    assert decoder["1"] == {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": False}
    assert config["add_bos_token"] is False and config["add_eos_token"] is False


def test_sft_packing_on_the_released_k2_chat_tokenizer(tmp_path):
    """SFT packing from a checkpoint whose tokenizer is the released file: rows match encode_chat, replies and
    calls labelled, the released layout recognised and kept."""
    from k2hf.finetune.packing import IGNORE, pack
    from k2hf.finetune.recipe import SFTRecipe

    samples = REPO_ROOT / "k2hf" / "sample_data" / "sft"
    released("k2_chat").save_pretrained(tmp_path / "released")
    recipe = SFTRecipe.from_dict({
        "model": str(tmp_path / "released"), "output_dir": str(tmp_path / "sft"), "layout": "k2_chat",
        "max_length": 4096, "num_proc": 1,
        "sources": [{"name": "fc", "kind": "glaive_function_calling",
                     "paths": [str(samples / "glaive_function_calling.jsonl")]}]})
    report = pack(recipe, tmp_path / "out", progress=False)
    assert report["sources"][0]["valid"] == 6 and report["sources"][0]["tools"]["tool_calls"] == 4
    from datasets import load_from_disk

    rows = load_from_disk(str(tmp_path / "out" / "dataset"))
    ids = [i for row in rows["input_ids"] for i in row]
    labels = [i for row in rows["labels"] for i in row]
    assert ids.count(32019) == 4 and all(label == 32019 for i, label in zip(ids, labels) if i == 32019)
    assert all(label == IGNORE for i, label in zip(ids, labels) if i in (32018, 32020, 32021))  # results, defs
    assert labels.count(2) == ids.count(2) == 11  # the 6 records hold 11 assistant messages; each ends in id 2
    assert detect_layout(PreTrainedTokenizerFast.from_pretrained(tmp_path / "out" / "tokenizer")) == "k2_chat"


@pytest.mark.parametrize("layout", ["k2", "k2_chat_060124"])  # (the default layout: the API tests above)
def test_tokenizer_command_writes_the_layout(layout, llama_sp_model, tmp_path):
    import subprocess
    import sys

    from transformers import AutoTokenizer

    result = subprocess.run([sys.executable, "-m", "k2hf.cli", "tokenizer", str(llama_sp_model), str(tmp_path),
                             "--layout", layout], capture_output=True, text=True, check=True)
    size = {"k2": 32018, "k2_chat_060124": 32022, "k2_chat": 32028}[layout]
    assert result.stdout.strip() == f"wrote K2 tokenizer, layout {layout} ({size} tokens) to {tmp_path}"
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert detect_layout(loaded) == layout and len(loaded) == size
    assert (loaded.chat_template is not None) is (layout != "k2")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is (layout == "k2") and len(config["added_tokens_decoder"]) == size - 32000 + 3
