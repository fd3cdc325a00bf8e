"""The one record reader and rejection type shared by pretraining data, SFT sources and the K2 release import."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2hf import ConversationError
from k2hf.records import Rejection, read_records


def _items(items) -> list:
    return [(i.reason, i.record, i.detail[:20]) if isinstance(i, Rejection) else i for i in items]


def test_jsonl_yields_rows_and_places_every_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one"}\n\n{broken\n[1, 2]\n{"text": "caf\xe9"}\n{"text": "two"}\n')
    items = list(read_records(str(path)))
    assert _items(items) == [
        (0, {"text": "one"}), ("empty_record", 1, "blank line"), ("malformed_json", 2, "Expecting property nam"[:20]),
        ("malformed_json", 3, "a JSON list, not an "), ("non_utf8", 4, "'utf-8' codec can't "), (5, {"text": "two"})]
    assert items[2].message().startswith(f"{path} line 3: malformed json: Expecting property name")
    assert all(i.source == str(path) for i in items if isinstance(i, Rejection))


def test_a_json_array_file_is_one_record_per_element(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("  \n" + json.dumps([{"q": 1}, {"q": 2}, "x"]))
    assert _items(read_records(str(path))) == [
        (0, {"q": 1}), (1, {"q": 2}), ("malformed_json", 2, "a JSON str, not an o")]


def test_fsspec_urls_read_like_local_files(tmp_path):
    import fsspec

    with fsspec.open("memory://records/a.json", "w") as f:  # not peekable: the array is found by seeking
        f.write(json.dumps([{"q": 1}, {"q": 2}]))
    assert list(read_records("memory://records/a.json")) == [(0, {"q": 1}), (1, {"q": 2})]


def test_parquet_csv_text_and_unreadable_files(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2]}), tmp_path / "t.parquet")
    assert list(read_records(str(tmp_path / "t.parquet"), columns=["text"])) == [(0, {"text": "a"}), (1, {"text": "b"})]
    # a column the file lacks: the rows still come (and count), without it
    assert list(read_records(str(tmp_path / "t.parquet"), columns=["body"])) == [(0, {}), (1, {})]
    (tmp_path / "t.csv").write_text("question,answer\nwhy?,because\n")
    assert list(read_records(str(tmp_path / "t.csv"))) == [(0, {"question": "why?", "answer": "because"})]
    (tmp_path / "t.txt").write_text("a whole document")
    assert list(read_records(str(tmp_path / "t.txt"))) == [(0, {"text": "a whole document"})]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    for name in ("bad.parquet", "missing.jsonl"):
        (item,) = read_records(str(tmp_path / name))
        assert (item.reason, item.record, item.source) == ("unreadable_file", -1, str(tmp_path / name))
        assert item.message().startswith(f"{tmp_path / name}: unreadable file: ")
    with pytest.raises(ValueError, match="cannot tell the format"):
        list(read_records(str(tmp_path / "t.xml")))


def test_one_rejection_type():
    error = ConversationError("K2-Chat: empty conversation", "empty_conversation")
    assert isinstance(error, Rejection) and error.reason == "empty_conversation"
    assert str(error) == "K2-Chat: empty conversation"
    assert error.at("sft.jsonl", 4).message() == "sft.jsonl line 5: empty conversation: K2-Chat: empty conversation"
