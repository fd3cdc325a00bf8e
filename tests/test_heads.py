"""The heads LLaMA has, on K2: sequence / token classification and question answering.

Each equals LLaMA's head holding the same weights, loads through its Auto class (with k2hf and as remote code
without it), starts from a causal-LM checkpoint (a reward model from the chat model), and exports to LLaMA.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
)

from k2hf import (
    K2Config,
    K2ForCausalLM,
    K2ForQuestionAnswering,
    K2ForSequenceClassification,
    K2ForTokenClassification,
)
from k2hf.conversion import export_to_llama, k2_to_llama_config

VOCAB = 448
HEADS = [
    (K2ForSequenceClassification, LlamaForSequenceClassification, AutoModelForSequenceClassification, ["logits"]),
    (K2ForTokenClassification, LlamaForTokenClassification, AutoModelForTokenClassification, ["logits"]),
    (K2ForQuestionAnswering, LlamaForQuestionAnswering, AutoModelForQuestionAnswering,
     ["start_logits", "end_logits"]),
]
IDS = [head[0].__name__ for head in HEADS]


def _head(cls, seed=0):
    torch.manual_seed(seed)
    return cls(K2Config.tiny(vocab_size=VOCAB, num_labels=3)).eval()


def _batch():
    """Two rows, the second right-padded with pad id 0 (sequence classification reads each row's last token)."""
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    ids[1, 7:] = 0
    mask = (ids != 0).long()
    return ids, mask


def _outputs(model, fields):
    ids, mask = _batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return [getattr(out, f) for f in fields]


@pytest.mark.parametrize(("k2_cls", "llama_cls", "auto_cls", "fields"), HEADS, ids=IDS)
def test_head_equals_llamas_with_the_same_weights(k2_cls, llama_cls, auto_cls, fields):
    k2 = _head(k2_cls)
    llama = llama_cls(k2_to_llama_config(k2.config)).eval()
    assert sorted(llama.state_dict()) == sorted(k2.state_dict())  # same parameter names, prefix included
    llama.load_state_dict(k2.state_dict())
    for ours, theirs in zip(_outputs(k2, fields), _outputs(llama, fields)):
        assert ours.shape[0] == 2 and torch.equal(ours, theirs)


def test_sequence_classification_scores_the_last_real_token():
    model = _head(K2ForSequenceClassification)
    ids, mask = _batch()
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :7]).logits
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[1:], alone, rtol=1e-5, atol=1e-6)


def test_sequence_classification_loss_and_training_step():
    model = _head(K2ForSequenceClassification).train()
    ids, mask = _batch()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.score.weight.grad.abs().sum() > 0 and model.model.layers[0].mlp.up_proj.weight.grad is not None


@pytest.mark.parametrize(("k2_cls", "llama_cls", "auto_cls", "fields"), HEADS, ids=IDS)
def test_head_saves_loads_through_auto_class_and_exports_to_llama(tmp_path, k2_cls, llama_cls, auto_cls, fields):
    k2 = _head(k2_cls, seed=1)
    k2.save_pretrained(tmp_path / "k2")
    config = json.loads((tmp_path / "k2" / "config.json").read_text())
    assert config["architectures"] == [k2_cls.__name__]
    assert config["auto_map"][auto_cls.__name__] == f"modeling_k2.{k2_cls.__name__}"
    loaded = auto_cls.from_pretrained(tmp_path / "k2").eval()
    assert type(loaded) is k2_cls
    expected = _outputs(k2, fields)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, fields), expected))

    export_to_llama(tmp_path / "k2", tmp_path / "llama")
    exported = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert exported["model_type"] == "llama" and exported["architectures"] == [llama_cls.__name__]
    llama = llama_cls.from_pretrained(tmp_path / "llama").eval()
    assert all(torch.equal(a, b) for a, b in zip(_outputs(llama, fields), expected))
    back = k2_cls.from_pretrained(tmp_path / "llama").eval()  # a LLaMA head checkpoint loads into the K2 head
    assert all(torch.equal(a, b) for a, b in zip(_outputs(back, fields), expected))


def test_reward_model_starts_from_a_causal_lm_checkpoint(tmp_path):
    """``K2ForSequenceClassification.from_pretrained(chat_model, num_labels=1)``: the decoder comes from the
    checkpoint (only the score head is new), as TRL's reward trainer expects."""
    torch.manual_seed(5)
    lm = K2ForCausalLM(K2Config.tiny(vocab_size=VOCAB))
    lm.save_pretrained(tmp_path / "lm")
    reward = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=1)
    assert type(reward) is K2ForSequenceClassification
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(reward.model.state_dict()[name], tensor), name
    ids, mask = _batch()
    with torch.no_grad():
        assert reward(input_ids=ids, attention_mask=mask).logits.shape == (2, 1)


REMOTE_CODE_SCRIPT = """
import sys
sys.modules["k2hf"] = None  # k2hf is not installed in this process
import torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids, mask = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=ids, attention_mask=mask).logits, sys.argv[3])
"""


def test_head_loads_as_remote_code_without_k2hf(tmp_path):
    model = _head(K2ForSequenceClassification, seed=2)
    model.save_pretrained(tmp_path / "ckpt")
    torch.save(_batch(), tmp_path / "x.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    subprocess.run([sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path / "ckpt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, env=env, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "y.pt"), _outputs(model, ["logits"])[0])
