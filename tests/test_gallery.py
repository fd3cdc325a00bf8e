"""The gallery: every checkpoint's outputs on the same prompts and items, as one static HTML page, all escaped."""

import json
from html.parser import HTMLParser

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from k2hf import cli
from k2hf.analysis.gallery import choice_logliks

PROMPTS = ["The river flows", "<script>alert('prompt')</script> & more"]
ITEMS = [{"question": "The capital of France is", "choices": [" Paris", " <b>Rome</b>", " Berlin"], "answer": 0},
         {"question": "2 + 2 =", "choices": [" 3", " 4"], "answer": 1}]


class _Page(HTMLParser):
    """Collects tags, the header row, table rows (cells as text) and list items with their classes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags, self.rows, self.items, self._cell, self._li = [], [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = ""
        if tag == "li":
            self._li = [dict(attrs).get("class", ""), ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None
        if tag == "li":
            self.items.append(tuple(self._li))
            self._li = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._li is not None:
            self._li[1] += data


@pytest.fixture(scope="module")
def gallery(drill_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gallery")
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    assert cli.main(["gallery", str(drill_run), "--prompts", str(tmp / "prompts.txt"), "--eval-items",
                     str(tmp / "items.jsonl"), "--max-new-tokens", "8", "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def test_page_has_prompts_down_checkpoints_across_and_marks_answers(gallery, drill_run):
    records = [json.loads(line) for line in (gallery / "gallery.jsonl").read_text().splitlines()]
    assert len(records) == 4 * (len(PROMPTS) + len(ITEMS))
    page = _Page()
    page.feed((gallery / "gallery.html").read_text())
    assert page.rows[0] == ["prompt / item", "ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"]
    assert [row[0] for row in page.rows[1:]] == PROMPTS + [i["question"] for i in ITEMS]
    for r in records:
        column = ["ckpt_001", "ckpt_002", "ckpt_003", "ckpt_004"].index(r["checkpoint"]) + 1
        if r["kind"] == "prompt":
            assert page.rows[1 + r["index"]][column] == r["output"]  # the output, verbatim after unescaping
        else:
            assert r["predicted"] == max(range(len(r["logliks"])), key=r["logliks"].__getitem__)
    correct = [text for cls, text in page.items if "correct" in cls.split()]
    assert len(correct) == 4 * len(ITEMS) and all(text.rstrip().endswith("\u2713") for text in correct)
    assert sum("picked" in cls.split() for cls, _ in page.items) == 4 * len(ITEMS)


def test_untrusted_text_is_escaped(gallery):
    """A `<script>` in a prompt (or a `<b>` in a choice) displays as text: the page has no such element."""
    page = _Page()
    page.feed((gallery / "gallery.html").read_text())
    assert "script" not in page.tags and "b" not in page.tags
    assert page.rows[2][0] == "<script>alert('prompt')</script> & more"
    assert any(text.startswith(" <b>Rome</b>") for _, text in page.items)


def test_choice_logliks_equal_the_models_own_loss(drill_run):
    """Independent check: -(mean loss over the choice tokens) x their count, through transformers' loss."""
    path = drill_run / "checkpoints" / "ckpt_004"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    item = ITEMS[0]
    cut = len(tokenizer(item["question"], add_special_tokens=False)["input_ids"])
    for choice, score in zip(item["choices"], choice_logliks(model, tokenizer, item["question"], item["choices"])):
        ids = torch.tensor([tokenizer(item["question"] + choice, add_special_tokens=False)["input_ids"]])
        labels = ids.clone()
        labels[0, :cut] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        assert score == pytest.approx(-loss.item() * (ids.shape[1] - cut), rel=1e-5)


def test_bad_item_files_stop_in_one_line_naming_the_line(tmp_path):
    from k2hf.analysis.gallery import read_items, read_prompts
    from k2hf.errors import UserError

    items = tmp_path / "items.jsonl"
    good = json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": 1})
    items.write_text(good + "\n\n{broken\n")
    with pytest.raises(UserError, match=r"items.jsonl line 3: malformed json"):
        read_items(items)
    items.write_text(good + "\n\n" + json.dumps({"question": "q", "choices": ["a"]}) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl line 3: missing field `answer`"):
        read_items(items)
    items.write_text(good + "\n\n")
    assert read_items(items) == [json.loads(good)]  # blank lines are fine
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Once"}) + "\n" + json.dumps(["not", "an", "object"]) + "\n")
    with pytest.raises(UserError, match=r"prompts.jsonl line 2: malformed json: a JSON list, not an object"):
        read_prompts(prompts)
