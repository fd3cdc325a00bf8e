"""Zero deprecation warnings from k2hf's own code under the installed transformers.

Model (forward, generate with both caches, a head, memorization decoding), pretraining and SFT run with every
FutureWarning / DeprecationWarning raised from a ``k2hf`` module turned into an error; deprecation messages that
transformers logs instead of warning (``past_key_values`` renamed to ``cache``, ...) fail the test too. This is
the check that a scheduled rename upstream (like 5.24's) shows up in CI, not in a user's empty chat.
"""

import json
import logging
import warnings

import pytest
import torch
import yaml

from conftest import REPO_ROOT, TAUGHT_CONVERSATION, train_tiny_run


@pytest.fixture()
def no_deprecations(caplog):
    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("error", category=category, module="k2hf")
        with caplog.at_level(logging.WARNING):
            yield
    logged = [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert not logged, logged


def test_model_paths_warn_nothing(no_deprecations, tiny_tokenizer):
    from k2hf import K2ForSequenceClassification
    from k2hf.analysis.memorization import greedy_continuations
    from k2hf.chat import generate_reply
    from k2hf.tiny import build_tiny_k2

    model = build_tiny_k2(tiny_tokenizer, seed=0).eval()
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, use_cache=True)
        for cache in ("dynamic", "static"):
            model.generate(ids, max_new_tokens=4, do_sample=False, cache_implementation=cache, pad_token_id=0)
        assert greedy_continuations(model, ids, 4).shape == (2, 4)
        assert isinstance(generate_reply(model, tiny_tokenizer, TAUGHT_CONVERSATION[:1], max_new_tokens=4), str)
        K2ForSequenceClassification(model.config).eval()(ids)
    loss = model.train()(ids, labels=ids).loss
    loss.backward()


def test_pretraining_warns_nothing(no_deprecations, sample_data, tmp_path):
    run = train_tiny_run(sample_data, tmp_path / "run", max_steps=4, checkpoint={"every_steps": 2})
    assert (run / "metrics.jsonl").read_text().count("\n") >= 4


def test_sft_warns_nothing(no_deprecations, tiny_tokenizer, tmp_path):
    from k2hf.finetune.launch import run as train
    from k2hf.finetune.recipe import load_recipe
    from k2hf.tiny import build_tiny_k2

    build_tiny_k2(tiny_tokenizer, seed=3).save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"messages": TAUGHT_CONVERSATION}) + "\n")
    raw = yaml.safe_load((REPO_ROOT / "finetune/recipes/tiny.yaml").read_text())
    raw.update(model=str(tmp_path / "base"), output_dir=str(tmp_path / "sft"),
               sources=[{"name": "one", "kind": "messages", "paths": [str(data)], "target": 2}],
               train={"num_train_epochs": 1, "per_device_train_batch_size": 1, "save_strategy": "no",
                      "report_to": [], "logging_steps": 1})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    out = train(load_recipe(tmp_path / "recipe.yaml"))
    assert json.loads((out / "config.json").read_text())["model_type"] == "k2"
