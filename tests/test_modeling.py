"""K2 model: LLaMA parity, packed-document isolation, caches, outputs, checkpointing, PEFT, save/load."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import TINY_VOCAB, random_ids, tiny_k2
from k2hf import K2Config, K2ForCausalLM, K2Model
from k2hf.checkpoints import CheckpointError
from k2hf.conversion import export_to_llama, k2_to_llama_config
from k2hf.tiny import build_tiny_k2

VOCAB = TINY_VOCAB
_ids = random_ids


def _model(seed=0, **overrides) -> K2ForCausalLM:
    return tiny_k2(seed, **overrides).eval()


@pytest.fixture()
def llama_dir(tmp_path):
    """A stock LlamaForCausalLM checkpoint shaped like K2 (what LLM360/K2 revisions are)."""
    k2 = _model(seed=3)
    llama = LlamaForCausalLM(k2_to_llama_config(k2.config))
    llama.load_state_dict(k2.state_dict())
    llama.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama_checkpoint_loads_with_bitwise_equal_logits(llama_dir, attn, caplog):
    with caplog.at_level(logging.WARNING):
        k2 = K2ForCausalLM.from_pretrained(llama_dir, attn_implementation=attn).eval()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert isinstance(k2.config, K2Config) and k2.config.rope_parameters["rope_theta"] == 10000.0
    llama = LlamaForCausalLM.from_pretrained(llama_dir, attn_implementation=attn).eval()
    x = _ids(2, 33)
    with torch.no_grad():
        assert torch.equal(k2(x).logits, llama(x).logits)


def test_export_to_llama_roundtrip(tmp_path, tiny_tokenizer):
    k2 = _model(seed=4)
    k2.save_pretrained(tmp_path / "k2")
    tiny_tokenizer.save_pretrained(tmp_path / "k2")
    out = export_to_llama(tmp_path / "k2", tmp_path / "llama")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config and not list(out.glob("*.py"))
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    llama = LlamaForCausalLM.from_pretrained(out).eval()
    x = _ids(1, 40)
    with torch.no_grad():
        assert torch.equal(llama(x).logits, k2(x).logits)
    back = K2ForCausalLM.from_pretrained(out).eval()  # and back again
    with torch.no_grad():
        assert torch.equal(back(x).logits, k2(x).logits)


def test_export_refuses_pickle_only_checkpoints(tmp_path):
    K2Config.tiny().save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no safetensors weights .* re-save with safe_serialization"):
        export_to_llama(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_truncated_or_mismatched_weights(tmp_path, tiny_tokenizer):
    """The source must load before anything is written: whole safetensors files holding every parameter of its
    config with the right shape (checked from the headers, without reading a tensor)."""
    model = build_tiny_k2(tiny_tokenizer)
    model.save_pretrained(tmp_path / "src")
    weights = tmp_path / "src" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a copy cut short, as by a full disk
    with pytest.raises(CheckpointError, match="model.safetensors is damaged or truncated"):
        export_to_llama(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, "intermediate_size": 999}))
    with pytest.raises(CheckpointError, match=r"do not match its config.json: wrong shapes \['model.layers.0.mlp"):
        export_to_llama(tmp_path / "src", tmp_path / "out")


def _packed_batch():
    """Three documents of 11, 5 and 16 tokens packed in one row, position_ids restarting per document."""
    docs = [_ids(1, n, seed=s) for n, s in ((11, 1), (5, 2), (16, 3))]
    positions = torch.cat([torch.arange(d.shape[1]) for d in docs]).unsqueeze(0)
    return docs, torch.cat(docs, dim=1), positions


# flex attention compiles its kernel on first use (~30 s on 2 CPU cores): in the slow tier
@pytest.mark.parametrize("attn", ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("use_cache", ["default", False])
def test_packed_documents_never_leak(attn, mode, use_cache):
    """Each packed document's logits equal running it alone, even with use_cache left at its default."""
    model = _model(seed=5, attn_implementation=attn)
    getattr(model, mode)()
    docs, packed, positions = _packed_batch()
    kwargs = {} if use_cache == "default" else {"use_cache": use_cache}
    grad = torch.enable_grad() if attn != "flex_attention" else torch.no_grad()  # CPU flex has no backward
    with grad:
        logits = model(input_ids=packed, position_ids=positions, **kwargs).logits
        start = 0
        for doc in docs:
            alone = model(input_ids=doc, **kwargs).logits
            diff = (logits[:, start : start + doc.shape[1]] - alone).abs().max().item()
            assert diff <= 1e-5, f"document at {start} leaks: max diff {diff}"
            start += doc.shape[1]


def test_stock_llama_still_leaks_across_packed_documents_with_the_default_cache():
    """Records why K2 overrides mask sizing (``_cache_for_mask``): stock LlamaForCausalLM, same weights, packed
    documents, ``use_cache`` left at its default, lets the second document attend to the first. When this test
    fails, transformers has fixed it and the override can go."""
    k2 = _model(seed=5, attn_implementation="sdpa")
    llama = LlamaForCausalLM(k2_to_llama_config(k2.config)).eval()
    llama.load_state_dict(k2.state_dict())
    docs, packed, positions = _packed_batch()
    with torch.no_grad():
        stock = llama(input_ids=packed, position_ids=positions).logits[:, docs[0].shape[1] : -docs[2].shape[1]]
        ours = k2(input_ids=packed, position_ids=positions).logits[:, docs[0].shape[1] : -docs[2].shape[1]]
        alone = llama(input_ids=docs[1]).logits
    assert (ours - alone).abs().max().item() <= 1e-5
    assert (stock - alone).abs().max().item() > 1e-2  # the leak


def test_packed_gradients_stay_inside_documents():
    """Loss on the last document gives zero gradient to the first document's embeddings."""
    model = _model(seed=6, attn_implementation="sdpa").train()
    docs, packed, positions = _packed_batch()
    embeds = model.get_input_embeddings()(packed).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=positions).logits
    logits[:, -docs[-1].shape[1] :].sum().backward()
    first = docs[0].shape[1]
    assert embeds.grad[:, :first].abs().max().item() == 0.0
    assert embeds.grad[:, -docs[-1].shape[1] :].abs().max().item() > 0.0


def _greedy_without_cache(model, prompt, steps):
    ids = prompt
    for _ in range(steps):
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generation_with_cache_matches_full_recompute(cache):
    model = _model(seed=7)
    prompt = _ids(1, 9, seed=9)
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        min_new_tokens=12,
        do_sample=False,
        cache_implementation=cache,
        pad_token_id=0,
    )
    with torch.no_grad():
        assert torch.equal(out, _greedy_without_cache(model, prompt, 12))


def test_left_padded_batch_generation_matches_single():
    model = _model(seed=8)
    short, long = _ids(1, 5, seed=1), _ids(1, 9, seed=2)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], 1), torch.ones(1, 9)]).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         pad_token_id=0)
    alone = model.generate(short, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, 4:], alone[0])


def test_outputs_hidden_states_attentions_and_tuples():
    model = _model(seed=10, attn_implementation="eager")
    x = _ids(2, 7)
    with torch.no_grad():
        out = model(x, output_hidden_states=True, output_attentions=True)
        as_tuple = model(x, return_dict=False, use_cache=False)
        as_dict = model(x, use_cache=False)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[0].shape == (2, 7, 64)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    rows = out.attentions[0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert torch.triu(out.attentions[0][0, 0], diagonal=1).abs().max() == 0  # causal
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_dict.logits)


def test_loss_is_shifted_cross_entropy():
    model = _model(seed=11)
    x = _ids(2, 10)
    out = model(x, labels=x)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_gradient_checkpointing_gives_same_gradients():
    x = _ids(2, 12)
    grads = []
    for checkpointing in (False, True):
        model = _model(seed=12).train()
        if checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(x, labels=x).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert any(getattr(layer, "gradient_checkpointing", False) for layer in model.model.layers)
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_peft_lora_trains_and_merges():
    from peft import LoraConfig, get_peft_model

    model = _model(seed=13).train()
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x = _ids(2, 12)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = lora(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    lora.eval()
    with torch.no_grad():
        adapted = lora(input_ids=x).logits
        merged = lora.merge_and_unload()
        assert isinstance(merged, K2ForCausalLM)
        assert torch.allclose(merged(input_ids=x).logits, adapted, atol=1e-5)


def test_save_and_auto_load_safetensors_only(tmp_path, caplog):
    model = _model(seed=14)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not [f for f in files if f.endswith(".bin")]
    assert {"modeling_k2.py", "configuration_k2.py"} <= set(files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_k2.K2ForCausalLM"
    with caplog.at_level(logging.WARNING):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    base = AutoModel.from_pretrained(tmp_path)  # (transformers reports the unused lm_head, as for LLaMA)
    assert type(loaded) is K2ForCausalLM and type(base) is K2Model
    x = _ids(1, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


REMOTE_CODE_SCRIPT = """
import sys
sys.modules["k2hf"] = None  # k2hf is not installed in this process: `import k2hf` raises ImportError
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert not any(name.startswith("k2hf") for name in sys.modules if sys.modules[name] is not None)
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


def test_remote_code_loads_without_k2hf(tmp_path):
    model = _model(seed=15)
    model.save_pretrained(tmp_path / "ckpt")
    x = _ids(1, 10)
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path / "ckpt"), str(tmp_path / "x.pt"),
         str(tmp_path / "y.pt")],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), model(x).logits)


def test_llama_config_conversion_describes_same_network():
    config = K2Config.k2_chat_65b()
    llama = k2_to_llama_config(config)
    assert isinstance(llama, LlamaConfig)
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings"):
        assert getattr(llama, field) == getattr(config, field), field
    assert llama.rope_parameters["rope_theta"] == 500000.0 and llama.tie_word_embeddings is False
