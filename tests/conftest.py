"""Shared fixtures. Every Hugging Face cache points into a temp dir and the Hub is offline: tests never touch the network."""

import os
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="k2hf-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
LLAMA_SP_MODEL = Path(
    os.environ.get("K2HF_LLAMA_TOKENIZER", REPO_ROOT.parent / "shared" / "llama-tokenizer" / "tokenizer.model")
)


@pytest.fixture(scope="session")
def llama_sp_model() -> Path:
    """The real LLaMA SentencePiece model (test data in ../shared); tests that need it skip when it is absent."""
    if not LLAMA_SP_MODEL.is_file():
        pytest.skip(f"real LLaMA tokenizer not found at {LLAMA_SP_MODEL}")
    return LLAMA_SP_MODEL


@pytest.fixture(scope="session")
def k2_tokenizer(llama_sp_model):
    """K2's tokenizer on the real LLaMA base."""
    from k2hf import build_k2_tokenizer

    return build_k2_tokenizer(llama_sp_model)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """K2's tokenizer on a tiny SentencePiece base trained on the bundled samples (always available)."""
    from k2hf.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-sp"))


@pytest.fixture(scope="session")
def chat_tokenizer(tiny_tokenizer):
    """The real K2 tokenizer when the LLaMA base is available, else the tiny one (format tests never skip)."""
    if not LLAMA_SP_MODEL.is_file():
        return tiny_tokenizer
    from k2hf import build_k2_tokenizer

    return build_k2_tokenizer(LLAMA_SP_MODEL)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh random tiny K2 in fp32 eval mode."""
    from k2hf.tiny import build_tiny_k2

    return build_tiny_k2(tiny_tokenizer, seed=0).eval()


@pytest.fixture(scope="session")
def taught_chat_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny K2 overfit on one K2-Chat conversation, saved with its tokenizer: greedy decoding must reproduce
    the reply and stop at eos, which makes chat/pipeline behaviour checkable exactly."""
    from k2hf import encode_chat
    from k2hf.tiny import build_tiny_k2

    model = build_tiny_k2(tiny_tokenizer, seed=1).train()
    ids = torch.tensor([encode_chat(tiny_tokenizer, TAUGHT_CONVERSATION)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05, f"could not overfit the fixture conversation (loss {loss.item():.3f})"
    out = tmp_path_factory.mktemp("taught-chat")
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


TAUGHT_CONVERSATION = [
    {"role": "user", "content": "What is the highest mountain in Africa?"},
    {"role": "assistant", "content": "Mount Kilimanjaro, in Tanzania."},
]
