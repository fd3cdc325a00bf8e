"""K2 model configuration.

K2 (LLM360) is LLaMA-shaped: pre-norm decoder, RMSNorm, RoPE, SwiGLU MLP, full multi-head attention (no GQA),
untied input/output embeddings. The released checkpoints on the Hub are plain ``model_type: llama``;
:meth:`K2Config.get_config_dict` reads those as K2 configs so ``K2ForCausalLM.from_pretrained`` loads them cleanly.

This file ships inside checkpoints as remote code: it imports only ``transformers`` and the standard library.
"""

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

LLAMA_MODEL_TYPE = "llama"
LLAMA_PREFIX = "Llama"  # LlamaForCausalLM <-> K2ForCausalLM, LlamaForSequenceClassification <-> K2For...
K2_VOCAB_ROWS = 32032  # embedding rows of every K2 checkpoint (32022 tokens used, padded to a multiple of 32)


@strict
class K2Config(PreTrainedConfig):
    r"""Configuration of a K2 decoder (:class:`K2Model` / :class:`K2ForCausalLM`).

    Defaults describe K2-65B (LLM360 K2 paper, Table 1). Use the presets :meth:`k2_65b`, :meth:`k2_chat_65b`
    and :meth:`tiny` rather than spelling the fields out.

    ```python
    >>> from k2hf import K2Config, K2ForCausalLM
    >>> model = K2ForCausalLM(K2Config.tiny())
    ```"""

    model_type = "k2"
    # The KV cache in model outputs: `cache` from transformers 5.24 on, `past_key_values` before.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # Same tensor/pipeline-parallel plans as LLaMA: the parameter names are identical.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = K2_VOCAB_ROWS
    hidden_size: int = 8192
    intermediate_size: int = 22016
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    mlp_bias: bool = False
    # Training loss without the full-vocabulary logits (see ``K2ForCausalLM.forward``): in training mode with
    # labels, the LM head and cross-entropy run ``loss_chunk_size`` tokens at a time and no logits are returned.
    chunked_loss: bool = True
    loss_chunk_size: int = 1024

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        # LLaMA configs from transformers 4 carry this key; K2 never used tensor-parallel pretraining slices.
        kwargs.pop("pretraining_tp", None)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: shapes must divide."""
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be at least 1, got {self.loss_chunk_size}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})."
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read a config as usual (local dir, Hub id with ``revision=``, cache), accepting LLaMA configs.

        The LLM360 K2 / K2-Chat checkpoints (and every ``ckpt_N`` revision) are ``model_type: llama``. Their
        fields are exactly ours, so relabelling is the whole conversion; doing it here keeps ``from_pretrained``
        free of the "instantiate a model of type llama as k2" warning.
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == LLAMA_MODEL_TYPE:
            config_dict = llama_dict_to_k2(config_dict)
        return config_dict, kwargs

    @classmethod
    def k2_65b(cls, **overrides) -> "K2Config":
        """K2-65B as pretrained (paper Table 1): 2048 context, RoPE theta 10000."""
        return cls(**{**_K2_65B, **overrides})

    @classmethod
    def k2_chat_65b(cls, **overrides) -> "K2Config":
        """K2-Chat-65B: the stage-2 context extension to 8192 tokens with RoPE theta 500000."""
        fields = {**_K2_65B, "max_position_embeddings": 8192}
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
        return cls(**{**fields, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "K2Config":
        """A K2-shaped model small enough for tests and CPU demos: 4.2M parameters with 32032 embedding rows
        (almost all in the embeddings), about 0.16M with a tiny tokenizer's vocabulary."""
        fields = {
            "hidden_size": 64,
            "intermediate_size": 172,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
        }
        return cls(**{**_K2_65B, **fields, **overrides})


_K2_65B: dict[str, Any] = {
    "vocab_size": K2_VOCAB_ROWS,
    "hidden_size": 8192,
    "intermediate_size": 22016,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 64,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}


def llama_dict_to_k2(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Relabel a ``model_type: llama`` config dict as K2 (fields are identical; drop LLaMA-only keys); each
    ``LlamaFor...`` architecture becomes the ``K2For...`` head of the same name."""
    converted = {k: v for k, v in config_dict.items() if k not in ("architectures", "auto_map", "pretraining_tp")}
    converted["model_type"] = K2Config.model_type
    converted["architectures"] = [
        "K2" + name.removeprefix(LLAMA_PREFIX) if name.startswith(LLAMA_PREFIX) else name
        for name in config_dict.get("architectures") or ["LlamaForCausalLM"]
    ]
    return converted


__all__ = ["K2Config", "K2_VOCAB_ROWS", "LLAMA_PREFIX", "llama_dict_to_k2"]
