"""`tokenization: k2_release` against a separate, straightforward implementation of K2's own procedure."""

import json

import numpy as np
import pytest
import yaml

from k2hf.pretrain.data.config import load_data_config
from k2hf.pretrain.data.prepare import prepare
from k2hf.pretrain.data.reader import PreparedData
from k2hf.recipes import RecipeError
from k2hf.sample_data import sample_texts
from k2hf.tokenizer import K2_CODE_TOKENS, save_tokenizer

SEQ = 64


def reference_rows(files: list[list[str]], tokenizer, seq_len: int) -> tuple[list[list[int]], int]:
    """K2's procedure, written out plainly: per file, `</s>` appended to each text, a running word buffer cut into
    4096-word windows, each window split at the special strings one after another, every piece tokenized on
    its own without special tokens, and the file's id stream cut into rows (its remainder dropped)."""
    specials = ["<s>", "</s>", "<unk>", *K2_CODE_TOKENS]
    rows, dropped = [], 0
    for texts in files:
        windows, buffer = [], []
        for text in texts:
            buffer.extend((text + "</s>").split(" "))
            while len(buffer) >= 4096:
                windows.append(" ".join(buffer[:4096]))
                buffer = buffer[4096:]
        windows.append(" ".join(buffer))
        ids = []
        for window in windows:
            cuts = [window]
            for special in specials:
                split = []
                for cut in cuts:
                    for i, part in enumerate(cut.split(special)):
                        if i:
                            split.append(special)
                        split.append(part)
                cuts = split
            for cut in cuts:  # special pieces as LLaMA's tokenizer + the code tokens had them (</s> = 2)
                if cut in specials:
                    ids.append({"<s>": 1, "</s>": 2, "<unk>": 0}.get(cut) or tokenizer.convert_tokens_to_ids(cut))
                else:  # K2's tokenizer had no chat or tool tokens: their strings are text here
                    ids.extend(tokenizer(cut, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        while len(ids) >= seq_len:
            rows.append(ids[:seq_len])
            ids = ids[seq_len:]
        dropped += len(ids)
    return rows, dropped


def make_files(seed: int) -> list[list[str]]:
    """Two files of ~6,000 words each (windows cut mid-document), with special strings, double spaces, leading
    and trailing spaces and newlines inside the documents."""
    rng = np.random.default_rng(seed)
    words = " ".join(sample_texts()).split()
    extras = ["</s>", "<fim_prefix>", "<s>", "<unk>", "<filename>", "", "\n", "  x", "<|beginofuser|>",
              "<|endoftext|>", "<tool_call>"]
    files = []
    for _ in range(2):
        texts = []
        for _ in range(30):
            doc = [words[i] for i in rng.integers(0, len(words), int(rng.integers(20, 400)))]
            for _ in range(3):
                doc.insert(int(rng.integers(0, len(doc))), extras[int(rng.integers(len(extras)))])
            texts.append((" " if rng.random() < 0.2 else "") + " ".join(doc) + (" " if rng.random() < 0.2 else ""))
        files.append(texts)
    return files


@pytest.fixture(params=["tiny", "llama"])
def tokenizer(request, tiny_tokenizer):
    if request.param == "tiny":
        return tiny_tokenizer
    return request.getfixturevalue("k2_tokenizer")


def _recipe(tmp_path, tokenizer_dir, files, **extra) -> dict:
    paths = []
    for i, texts in enumerate(files):
        path = tmp_path / f"part_{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths.append(path.name)
    recipe = {"tokenizer": str(tokenizer_dir), "seq_len": SEQ, "num_chunks": 1, "tokenization": "k2_release",
              "subsets": [{"name": "web", "paths": paths}], **extra}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return recipe


def test_k2_release_rows_equal_the_reference(tokenizer, tmp_path):
    files = make_files(0)
    save_tokenizer(tokenizer, tmp_path / "tok")
    _recipe(tmp_path, tmp_path / "tok", files)
    manifest = prepare(load_data_config(tmp_path / "recipe.yaml"), tmp_path / "out", progress=False)
    expected, dropped = reference_rows(files, tokenizer, SEQ)
    data = PreparedData(tmp_path / "out")
    got = np.asarray(data.chunk(0).tokens).tolist()
    assert len(got) == len(expected) > 100
    assert sorted(got) == sorted(expected)  # the chunk is shuffled; every row is there exactly once
    (subset,) = manifest.subsets
    assert subset.tail_tokens_dropped == dropped  # each file's remainder, not the subset's
    assert subset.documents_read == 60 == subset.documents_packed + sum(subset.documents_skipped.values())
    assert data.verify() == []
    # provenance: a piece that starts a document and ends before the row does ends with the `</s>` id
    for row in range(0, len(got), 7):
        for piece in data.describe_row(0, row)[:-1]:
            a, b = piece["position"]
            assert got[row][b - 1] == tokenizer.eos_token_id, (row, piece)


def test_k2_release_differs_from_the_default_as_documented(k2_tokenizer, tmp_path):
    """The README's example: two documents, `Hello world` and `Bye <fim_prefix>`."""
    save_tokenizer(k2_tokenizer, tmp_path / "tok")
    rows = {}
    for mode in ("default", "k2_release"):
        _recipe(tmp_path, tmp_path / "tok", [["Hello world", "Bye <fim_prefix>"]], tokenization=mode, seq_len=9)
        prepare(load_data_config(tmp_path / "recipe.yaml"), tmp_path / mode, progress=False)
        data = PreparedData(tmp_path / mode)
        rows[mode] = np.asarray(data.chunk(0).tokens).tolist()
    # default: each document whole (SentencePiece ids), eos id appended, `<fim_prefix>` kept as text (first 9):
    # ▁Hello ▁world </s> ▁By e ▁< f im _
    assert rows["default"] == [[15043, 3186, 2, 2648, 29872, 529, 29888, 326, 29918]]
    # k2_release: `Hello world</s> Bye <fim_prefix></s>` cut at special strings, each piece encoded fresh: the
    # piece " Bye " starts with a lone "▁" (29871) and ends with one; `<fim_prefix>` becomes token 32000
    assert rows["k2_release"] == [[15043, 3186, 2, 29871, 2648, 29872, 29871, 32000, 2]]


def test_k2_release_recipe_errors(tmp_path, tiny_tokenizer):
    save_tokenizer(tiny_tokenizer, tmp_path / "tok")
    recipe = _recipe(tmp_path, tmp_path / "tok", [["a b c"]])
    recipe["subsets"][0]["fim"] = True
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="tokenization k2_release has no fill-in-the-middle"):
        load_data_config(tmp_path / "recipe.yaml")
    with pytest.raises(RecipeError, match=r"`tokenization` must be one of 'default', 'k2_release' \(got 'sent"):
        load_data_config(tmp_path / "recipe.yaml", tokenization="sentencepiece")
