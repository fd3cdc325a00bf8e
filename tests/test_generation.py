"""K2's generation, token for token against stock ``LlamaForCausalLM`` holding the same weights.

Every way transformers users decode (greedy, sampling, beam search, assisted decoding, static cache and its
compiled forward, continuing from a returned cache, from ``inputs_embeds``, left-padded batches) must give
LLaMA's exact tokens, under whichever name (``cache`` or ``past_key_values``) the installed transformers uses.
A K2 that silently drops the cache decodes on one token at a time and fails all of these.
"""

import contextlib
import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

from k2hf import K2Config, K2ForCausalLM
from k2hf.conversion import k2_to_llama_config
from k2hf.modeling import CACHE_ARG

VOCAB = 448
NEW = 10


def _pair(seed: int = 0, **overrides) -> tuple[K2ForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(seed)
    k2 = K2ForCausalLM(K2Config.tiny(vocab_size=VOCAB, **overrides)).eval()
    llama = LlamaForCausalLM(k2_to_llama_config(k2.config)).eval()
    llama.load_state_dict(k2.state_dict())
    return k2, llama


@pytest.fixture(scope="module")
def pair():
    return _pair(seed=0)


def _prompt(batch=1, length=9, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _generate(model, **kwargs):
    with torch.no_grad():
        return model.generate(pad_token_id=0, eos_token_id=None, max_new_tokens=NEW, **kwargs)


def _same_tokens(k2, llama, **kwargs):
    """Generate with both models, each from the same RNG state; return K2's tokens after checking they agree."""
    torch.manual_seed(1234)
    ours = _generate(k2, **kwargs)
    torch.manual_seed(1234)
    theirs = _generate(llama, **kwargs)
    assert ours.shape == theirs.shape
    assert ours.tolist() == theirs.tolist()
    return ours


def _greedy_without_cache(model, prompt, new_tokens):
    ids = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    return ids


def test_greedy_matches_llama_and_recompute(pair):
    k2, llama = pair
    prompt = _prompt()
    ours = _same_tokens(k2, llama, input_ids=prompt, do_sample=False)
    assert ours.shape == (1, 9 + NEW)
    assert torch.equal(ours, _greedy_without_cache(k2, prompt, NEW))  # the cache is really used and really right


def test_sampling_with_seed_matches_llama(pair):
    k2, llama = pair
    ours = _same_tokens(k2, llama, input_ids=_prompt(batch=3), do_sample=True, top_k=50, top_p=0.9, temperature=1.3)
    torch.manual_seed(4321)
    other = _generate(k2, input_ids=_prompt(batch=3), do_sample=True, top_k=50, top_p=0.9, temperature=1.3)
    assert not torch.equal(ours, other)  # sampling is really on: another seed draws other tokens


def test_beam_search_matches_llama(pair):
    k2, llama = pair
    ours = _same_tokens(k2, llama, input_ids=_prompt(batch=2), num_beams=4, num_return_sequences=2, do_sample=False)
    assert ours.shape == (4, 9 + NEW)


def test_assisted_decoding_matches_llama(pair):
    k2, llama = pair
    k2_draft, llama_draft = _pair(seed=7, num_hidden_layers=1)
    greedy = _generate(k2, input_ids=_prompt(), do_sample=False)
    torch.manual_seed(0)
    ours = _generate(k2, input_ids=_prompt(), do_sample=False, assistant_model=k2_draft)
    torch.manual_seed(0)
    theirs = _generate(llama, input_ids=_prompt(), do_sample=False, assistant_model=llama_draft)
    assert ours.tolist() == theirs.tolist() == greedy.tolist()  # greedy assisted decoding changes no token


def test_static_cache_matches_llama(pair):
    k2, llama = pair
    ours = _same_tokens(k2, llama, input_ids=_prompt(), do_sample=False, cache_implementation="static")
    assert torch.equal(ours, _greedy_without_cache(k2, _prompt(), NEW))


def test_compiled_forward_with_static_cache_matches_eager(pair):
    """Decoding with a static cache through ``torch.compile(fullgraph=True)`` (no graph break allowed; aot_eager
    traces exactly what inductor would compile, in 2 s instead of 50 s on 2 cores: test_compile.py runs inductor)."""
    k2, _ = _pair(seed=0)
    eager = _generate(k2, input_ids=_prompt(), do_sample=False, cache_implementation="static")
    torch._dynamo.reset()
    k2.forward = torch.compile(k2.forward, fullgraph=True, backend="aot_eager")
    try:
        compiled = _generate(k2, input_ids=_prompt(), do_sample=False, cache_implementation="static")
    finally:
        torch._dynamo.reset()
    assert compiled.tolist() == eager.tolist()


def test_continue_from_returned_cache(pair):
    """Generate, then continue from the returned cache: the same tokens as one longer generation."""
    k2, llama = pair
    prompt = _prompt()
    with torch.no_grad():
        first = k2.generate(prompt, do_sample=False, max_new_tokens=NEW, pad_token_id=0, eos_token_id=None,
                            return_dict_in_generate=True)
        cache = getattr(first, CACHE_ARG)
        assert cache.get_seq_length() == 9 + NEW - 1
        more = k2.generate(first.sequences, do_sample=False, max_new_tokens=NEW, pad_token_id=0, eos_token_id=None,
                           **{CACHE_ARG: cache})
        whole = k2.generate(prompt, do_sample=False, max_new_tokens=2 * NEW, pad_token_id=0, eos_token_id=None)
        theirs = llama.generate(prompt, do_sample=False, max_new_tokens=2 * NEW, pad_token_id=0, eos_token_id=None)
    assert more.tolist() == whole.tolist() == theirs.tolist()


def test_old_cache_name_is_still_accepted(pair):
    """A caller passing ``past_key_values`` (the name before transformers 5.24) gets the cached result."""
    k2, _ = pair
    prompt = _prompt(length=12)
    with torch.no_grad():
        full = k2(prompt).logits[:, -1]
        head = k2(prompt[:, :-1], use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values") if CACHE_ARG == "cache" else _no_warnings():
            tail = k2(prompt[:, -1:], past_key_values=getattr(head, CACHE_ARG), use_cache=True)
    torch.testing.assert_close(tail.logits[:, -1], full, rtol=1e-5, atol=1e-5)


@contextlib.contextmanager
def _no_warnings():
    """Before transformers 5.24 ``past_key_values`` is the current name: taking it must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_generation_from_inputs_embeds_matches_llama(pair):
    k2, llama = pair
    prompt = _prompt()
    embeds = k2.get_input_embeddings()(prompt).detach()
    ours = _same_tokens(k2, llama, inputs_embeds=embeds, do_sample=False)
    assert ours.shape == (1, NEW)  # only the new tokens come back from embeddings
    assert ours.tolist() == _greedy_without_cache(k2, prompt, NEW)[:, 9:].tolist()


def test_left_padded_batch_matches_llama_and_unpadded(pair):
    k2, llama = pair
    long, short = _prompt(length=9, seed=1)[0], _prompt(length=5, seed=2)[0]
    ids = torch.stack([long, torch.cat([torch.zeros(4, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    ours = _same_tokens(k2, llama, input_ids=ids, attention_mask=mask, do_sample=False)
    alone = _generate(k2, input_ids=short[None], do_sample=False)
    assert ours[1, 4:].tolist() == alone[0].tolist()  # padding changes nothing for the short prompt


def test_logits_to_keep_matches_llama(pair):
    k2, llama = pair
    x = _prompt(batch=2, length=16)
    with torch.no_grad():
        full = k2(x).logits
        for keep in (1, 5, torch.tensor([0, 7, 15])):
            ours, theirs = k2(x, logits_to_keep=keep).logits, llama(x, logits_to_keep=keep).logits
            assert torch.equal(ours, theirs)
            index = keep if torch.is_tensor(keep) else torch.arange(16 - keep, 16)
            torch.testing.assert_close(ours, full[:, index], rtol=1e-5, atol=1e-6)  # fewer rows, other matmul


def test_packed_position_ids_match_llama_without_cache(pair):
    """Packed rows: K2 isolates documents even with the default cache; LLaMA does only with ``use_cache=False``."""
    k2, llama = pair
    docs = [_prompt(length=n, seed=n)[0] for n in (7, 4, 9)]
    packed = torch.cat(docs)[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    with torch.no_grad():
        ours = k2(packed, position_ids=positions).logits
        theirs = llama(packed, position_ids=positions, use_cache=False).logits
        alone = k2(docs[2][None]).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(ours[:, -9:], alone, rtol=1e-5, atol=1e-5)
