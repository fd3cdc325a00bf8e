"""K2 decoder in transformers-5 style.

The architecture and parameter names are LLaMA's, so every LLM360 K2 checkpoint (``model_type: llama``) loads
with bit-identical logits. What K2 adds over stock LLaMA:

* packed documents never leak: when ``position_ids`` restart per document and no attention mask is given, the
  mask is block-diagonal even when ``use_cache`` is left at its default (stock LLaMA builds a cache first and
  then skips packed-sequence detection, so documents attend to each other);
* training never holds the full-vocabulary logits: in training mode with labels, the LM head and cross-entropy run
  a chunk of tokens at a time (``config.chunked_loss``), the same loss and gradients as the plain path;
* K2 presets and LLaMA <-> K2 config conversion live in :mod:`configuration_k2`.

Attention goes through ``ALL_ATTENTION_FUNCTIONS`` (eager, sdpa, flex, flash-attention 2/3, kernels), decoder
layers are ``GradientCheckpointingLayer``s, and outputs are recorded with ``capture_outputs``.

This file ships inside checkpoints as remote code: it imports only ``torch``, ``transformers`` and its sibling.
"""

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import (
    GenericForQuestionAnswering,
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.auto import AutoModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_k2 import K2Config

# transformers 5.24 renamed the KV-cache argument of model forwards, decoder layers, mask builders and model outputs
# from `past_key_values` to `cache` (the old name is deprecated until 5.40). K2 speaks the installed version's name
# to transformers, and accepts both from callers.
CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def accepts_both_cache_names(forward: Callable) -> Callable:
    """Let ``forward`` (whose argument is ``cache``) also be called with ``past_key_values``.

    Under transformers >= 5.24 the old name is deprecated exactly as in transformers' own models; before 5.24 it
    is the name ``generate`` uses, so it is taken silently.
    """
    if CACHE_ARG == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def forward_taking_past_key_values(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("Pass the KV cache once, as `cache` or `past_key_values`, not both.")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return forward_taking_past_key_values


class K2RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in fp32 (identical to ``LlamaRMSNorm``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class K2RotaryEmbedding(nn.Module):
    """RoPE cos/sin tables for the given positions (any ``rope_type`` transformers knows)."""

    def __init__(self, config: K2Config) -> None:
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: K2Config, **kwargs) -> tuple[torch.Tensor, float]:
        """Inverse frequencies of the original RoPE: ``theta ** (-2i / head_dim)``."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate half the hidden dims: ``[x1, x2] -> [-x2, x1]``."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply RoPE to query and key states shaped ``(batch, heads, seq, head_dim)``."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class K2MLP(nn.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: K2Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Expand ``(batch, kv_heads, seq, dim)`` to ``(batch, kv_heads * n_rep, seq, dim)`` (no-op for K2's MHA)."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention (softmax in fp32); returns the weights for ``output_attentions``."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class K2Attention(nn.Module):
    """Multi-head self-attention dispatched through the transformers attention-interface registry."""

    def __init__(self, config: K2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class K2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: K2Config, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = K2Attention(config=config, layer_idx=layer_idx)
        self.mlp = K2MLP(config)
        self.input_layernorm = K2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = K2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        # The cache arrives under CACHE_ARG: that is the name GradientCheckpointingLayer drops when it recomputes.
        cache = kwargs.pop(CACHE_ARG, None)
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class K2PreTrainedModel(PreTrainedModel):
    """Weight init, attention-backend flags and output recording shared by the K2 models."""

    config: K2Config
    config_class = K2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["K2DecoderLayer"]
    _skip_keys_device_placement = [CACHE_ARG]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": K2DecoderLayer,
        "attentions": K2Attention,
    }


def _cache_for_mask(cache: Cache | None) -> Cache | None:
    """The cache that mask creation must size against, or ``None`` when it holds nothing yet.

    transformers only detects packed documents (``position_ids`` restarting) when no cache is given.
    A forward pass with the default ``use_cache=True`` creates an empty ``DynamicCache`` first, so stock LLaMA
    silently falls back to one causal mask over the whole packed row and documents attend to each other.
    An empty dynamic cache adds no keys, so sizing the mask without it is identical except that packing is
    detected. Static (compileable) caches keep their fixed kv length and are always passed through.
    """
    if cache is None or getattr(cache, "is_compileable", False):
        return cache
    return cache if cache.get_seq_length() > 0 else None


def _chunk_loss_sum(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Summed cross-entropy of one chunk of tokens; its logits live only inside this call."""
    logits = lm_head(hidden).float()
    return nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


def chunked_causal_lm_loss(
    lm_head: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.Tensor | None,
    chunk_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Next-token cross-entropy of ``lm_head(hidden_states)`` without ever holding the whole logits tensor.

    Same semantics as transformers' ``ForCausalLMLoss`` (labels shifted inside unless ``shift_labels`` is given,
    fp32 logits, ``ignore_index``, sum / ``num_items_in_batch`` or mean over the counted tokens). Each chunk's LM
    head + cross-entropy runs under non-reentrant activation checkpointing: its logits are freed after the forward
    and recomputed, one chunk at a time, in the backward, so at most one chunk's logits (and their gradient) exist.
    Calling ``lm_head`` as a module, rather than multiplying by its weight in a hand-written autograd function
    (Liger's way), keeps every hook on it working: DeepSpeed ZeRO-3 gathering, FSDP, PEFT adapters, TP plans.
    """
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    targets = shift_labels.reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        end = start + chunk_size
        total = total + checkpoint(
            _chunk_loss_sum, lm_head, hidden[start:end], targets[start:end], ignore_index, use_reentrant=False
        )
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class K2Model(K2PreTrainedModel):
    """The K2 decoder stack without the language-model head."""

    def __init__(self, config: K2Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [K2DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = K2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = K2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @accepts_both_cache_names
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_ARG: _cache_for_mask(cache)},
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_ARG: cache},
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_ARG: cache})


class K2ForCausalLM(K2PreTrainedModel, GenerationMixin):
    """K2 with its (untied) language-model head; loads LLaMA-format K2 checkpoints unchanged."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # only used if tie_word_embeddings
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: K2Config) -> None:
        super().__init__(config)
        self.model = K2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @accepts_both_cache_names
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        loss = logits = None
        if labels is not None and self.training and self.config.chunked_loss and _keeps_all(logits_to_keep):
            # Liger's convention: the training loss comes without logits (1 GiB of fp32 per 8K-token row for K2).
            loss = chunked_causal_lm_loss(self.lm_head, hidden_states, labels, self.config.loss_chunk_size, **kwargs)
        else:
            slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, slice_indices, :])
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_ARG: getattr(outputs, CACHE_ARG)},
        )


def _keeps_all(logits_to_keep: int | torch.Tensor) -> bool:
    """Whether ``logits_to_keep`` asks for every position (the only case a training loss is defined for)."""
    return isinstance(logits_to_keep, int) and logits_to_keep == 0


class K2HeadMixin:
    """Builds the decoder of transformers' generic heads, which call ``AutoModel.from_config(config)``.

    Registration is keyed by the config class, and loading this file as remote code makes a fresh ``K2Config``
    class per load, so the pair is registered for the config actually given (a no-op when k2hf already did).
    """

    def __init__(self, config: K2Config) -> None:
        AutoModel.register(type(config), K2Model, exist_ok=True)
        super().__init__(config)


class K2ForSequenceClassification(K2HeadMixin, GenericForSequenceClassification, K2PreTrainedModel):
    """K2 with a linear score head on the last non-padding token (e.g. a reward model for RLHF / DPO)."""


class K2ForTokenClassification(K2HeadMixin, GenericForTokenClassification, K2PreTrainedModel):
    """K2 with a linear score head on every token."""


class K2ForQuestionAnswering(K2HeadMixin, GenericForQuestionAnswering, K2PreTrainedModel):
    """K2 with a span-start / span-end head for extractive question answering."""

    base_model_prefix = "transformer"  # as LlamaForQuestionAnswering names it, so exports copy weights unchanged


__all__ = [
    "CACHE_ARG",
    "K2ForCausalLM",
    "K2ForQuestionAnswering",
    "K2ForSequenceClassification",
    "K2ForTokenClassification",
    "K2Model",
    "K2PreTrainedModel",
]
