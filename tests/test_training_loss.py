"""Training loss without full-vocabulary logits (chunked LM head + cross-entropy) and the bf16-autocast step."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_VOCAB, random_ids, tiny_k2
from k2hf import K2Config
from k2hf.conversion import k2_to_llama_config

VOCAB = TINY_VOCAB
_model, _ids = tiny_k2, random_ids  # training mode: a fresh module trains


def _step(model, chunked: bool, **inputs):
    """Training-mode forward + backward; returns the output and every parameter's gradient."""
    model.config.chunked_loss = chunked
    model.train().zero_grad()
    out = model(**inputs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
@pytest.mark.parametrize("num_items", [None, 45])
def test_chunked_loss_and_gradients_equal_the_plain_path(chunk, num_items):
    model = _model(seed=1, loss_chunk_size=chunk)
    ids = _ids(2, 33)
    labels = ids.clone()
    labels[0, :9] = -100  # a prompt that is not trained on
    labels[1, 20:] = -100
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    chunked, chunked_grads = _step(model, True, input_ids=ids, labels=labels, use_cache=False, **extra)
    plain, plain_grads = _step(model, False, input_ids=ids, labels=labels, use_cache=False, **extra)
    assert chunked.logits is None and plain.logits.shape == (2, 33, VOCAB)
    assert abs(chunked.loss.item() - plain.loss.item()) <= 1e-6 * plain.loss.item()
    worst = max(_rel(chunked_grads[name], plain_grads[name]) for name in plain_grads)
    assert worst <= 1e-6, worst
    if num_items is not None:  # the sum over counted tokens divided by the caller's count, as transformers does
        counted = (labels[:, 1:] != -100).sum().item()
        mean, _ = _step(model, False, input_ids=ids, labels=labels, use_cache=False)
        assert chunked.loss.item() == pytest.approx(mean.loss.item() * counted / num_items, rel=1e-6)


def test_shift_labels_and_ignore_index_follow_transformers():
    model = _model(seed=2, loss_chunk_size=5)
    ids = _ids(1, 20)
    shift = torch.cat([ids[:, 1:], torch.full((1, 1), 7)], dim=1)
    shift[0, :4] = 99
    kwargs = {"input_ids": ids, "labels": ids, "shift_labels": shift, "ignore_index": 99, "use_cache": False}
    chunked, chunked_grads = _step(model, True, **kwargs)
    plain, plain_grads = _step(model, False, **kwargs)
    assert abs(chunked.loss.item() - plain.loss.item()) <= 1e-6 * plain.loss.item()
    assert max(_rel(chunked_grads[n], plain_grads[n]) for n in plain_grads) <= 1e-6


class _LargestLogits(TorchDispatchMode):
    """Records the largest number of elements of any vocabulary-wide tensor an op produced (logits, their grads)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == VOCAB:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunked", [True, False])
def test_training_never_holds_the_full_logits(chunked):
    """Forward + backward with 512 tokens: the chunked path's largest vocabulary-wide tensor is one 128-token chunk
    of logits (the LM head's own weight and gradient, 64 x 448, are smaller)."""
    model = _model(seed=3, loss_chunk_size=128, chunked_loss=chunked).train()
    ids = _ids(2, 256)
    with _LargestLogits() as probe:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    full = ids.numel() * VOCAB
    if chunked:
        assert probe.largest == 128 * VOCAB
    else:
        assert probe.largest == full


def test_eval_mode_calls_without_labels_and_the_flag_keep_logits():
    model = _model(seed=4, loss_chunk_size=8)
    ids = _ids(2, 17)
    with torch.no_grad():
        model.eval()
        evaluated = model(input_ids=ids, labels=ids)
        model.train()
        no_labels = model(input_ids=ids)
        model.config.chunked_loss = False
        flag_off = model(input_ids=ids, labels=ids)
    assert torch.equal(evaluated.logits, no_labels.logits) and torch.equal(evaluated.logits, flag_off.logits)
    assert torch.equal(evaluated.loss, flag_off.loss)


def test_config_checks_and_llama_export_drops_training_options():
    with pytest.raises(StrictDataclassClassValidationError, match="loss_chunk_size must be at least 1"):
        K2Config.tiny(loss_chunk_size=0)
    llama = k2_to_llama_config(K2Config.tiny(chunked_loss=False, loss_chunk_size=16)).to_dict()
    assert "chunked_loss" not in llama and "loss_chunk_size" not in llama


def _packed_row(first_seed: int):
    """Documents of 40, 23 and 33 tokens in one row (position_ids restart); labels only on the last one."""
    docs = [_ids(1, 40, seed=first_seed), _ids(1, 23, seed=8), _ids(1, 33, seed=9)]
    ids = torch.cat(docs, dim=1)
    positions = torch.cat([torch.arange(d.shape[1]) for d in docs]).unsqueeze(0)
    labels = torch.full_like(ids, -100)
    labels[:, -33:] = ids[:, -33:]
    return ids, positions, labels


def _autocast_step(model, ids, positions, labels, bf16: bool):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
    loss.backward()
    return loss.detach(), model.lm_head.weight.grad.clone()


def test_bf16_autocast_training_step_is_close_to_fp32_and_keeps_documents_apart():
    """The mixed-precision step GPUs take (fp32 weights, bf16 autocast), on packed rows, with the chunked loss.

    Tolerance: bf16 keeps 8 bits of mantissa, so the loss may move by ~1e-2 relative over two layers; we allow 2e-2
    for the loss and 5e-2 for the LM head gradient."""
    model = _model(seed=5, loss_chunk_size=16, attn_implementation="sdpa").train()
    ids, positions, labels = _packed_row(first_seed=7)
    bf16_loss, bf16_grad = _autocast_step(model, ids, positions, labels, bf16=True)
    fp32_loss, fp32_grad = _autocast_step(model, ids, positions, labels, bf16=False)
    assert torch.isfinite(bf16_loss) and bf16_loss.dtype == torch.float32
    assert abs(bf16_loss.item() - fp32_loss.item()) <= 2e-2 * fp32_loss.item()
    assert _rel(bf16_grad, fp32_grad) <= 5e-2
    # documents stay apart under autocast: other tokens in the first document change nothing, bit for bit
    other_ids, _, _ = _packed_row(first_seed=70)
    other_loss, other_grad = _autocast_step(model, other_ids, positions, labels, bf16=True)
    assert torch.equal(other_loss, bf16_loss) and torch.equal(other_grad, bf16_grad)
    # and the last document scores (almost) as it does alone
    alone_loss, _ = _autocast_step(model, ids[:, -33:], positions[:, -33:], labels[:, -33:], bf16=True)
    assert abs(alone_loss.item() - bf16_loss.item()) <= 1e-2 * alone_loss.item()
