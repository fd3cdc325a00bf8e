"""K2Config presets, validation and reading LLaMA-format configs."""

import json
import logging

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from k2hf import K2Config, K2ForCausalLM


def test_k2_65b_matches_paper_table_1():
    c = K2Config.k2_65b()
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (80, 8192, 22016)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (64, 64, 128)
    assert c.rms_norm_eps == 1e-5 and c.vocab_size == 32032 and c.tie_word_embeddings is False
    assert c.max_position_embeddings == 2048 and c.rope_parameters["rope_theta"] == 10000.0
    assert c.model_type == "k2" and c.hidden_act == "silu"


def test_k2_chat_65b_extends_context_and_rope_theta():
    c = K2Config.k2_chat_65b()
    assert c.max_position_embeddings == 8192 and c.rope_parameters["rope_theta"] == 500000.0
    assert c.num_hidden_layers == 80 and c.hidden_size == 8192


def test_k2_65b_parameter_count():
    """Built on the meta device: the module tree has the paper's ~65B parameters."""
    c = K2Config.k2_65b()
    with torch.device("meta"):
        model = K2ForCausalLM(c)
    n = sum(p.numel() for p in model.parameters())
    h, f, v, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    assert n == 2 * v * h + L * (4 * h * h + 3 * h * f + 2 * h) + h
    assert 65.2e9 < n < 65.4e9


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hidden_size": 100, "num_attention_heads": 3, "num_key_value_heads": 3}, "multiple of num_attention_heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ],
)
def test_bad_shapes_fail_with_clear_message(fields, message):
    with pytest.raises(Exception, match=message):
        K2Config.tiny(**fields)


def _llama_config_json(tmp_path, **extra):
    """A config.json as on the Hub for LLM360/K2 (transformers-4 era, model_type llama)."""
    fields = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 172,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32032,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        **extra,
    }
    (tmp_path / "config.json").write_text(json.dumps(fields))
    return tmp_path


def test_llama_config_reads_as_k2_without_warnings(tmp_path, caplog):
    _llama_config_json(tmp_path, rope_theta=500000.0, max_position_embeddings=8192)
    with caplog.at_level(logging.WARNING):
        c = K2Config.from_pretrained(tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert isinstance(c, K2Config) and c.model_type == "k2"
    assert c.rope_parameters["rope_theta"] == 500000.0 and c.max_position_embeddings == 8192
    assert c.dtype == torch.bfloat16 and c.vocab_size == 32032
    assert not hasattr(c, "pretraining_tp")


def test_autoconfig_resolves_k2(tmp_path):
    K2Config.tiny().save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is K2Config
    assert loaded.to_dict()["hidden_size"] == 64


def test_autoconfig_leaves_llama_configs_alone(tmp_path):
    """Only K2's own loaders relabel LLaMA configs; AutoConfig still gives stock users a LlamaConfig."""
    assert type(AutoConfig.from_pretrained(_llama_config_json(tmp_path))) is LlamaConfig
