"""Shared fixtures. Every Hugging Face cache points into a temp dir and the Hub is offline: tests never touch the
network."""

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


TINY_VOCAB = 448  # the vocabulary of tiny models built without a tokenizer


def tiny_k2(seed: int = 0, vocab: int = TINY_VOCAB, **overrides):
    """A tiny random K2 (``K2Config.tiny``), seeded; ``overrides`` go to its config."""
    from k2hf.modeling import K2Config, K2ForCausalLM

    torch.manual_seed(seed)
    return K2ForCausalLM(K2Config.tiny(vocab_size=vocab, **overrides))


def random_ids(*shape: int, seed: int = 0, vocab: int = TINY_VOCAB) -> torch.Tensor:
    """Seeded random token ids (never the special ids 0-2)."""
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


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


# ------------------------------------------------------------------ runs shared by the research-suite tests
def _drill_spikes() -> dict:
    """The spike drill's settings, stated once, in the demo: detection sized for a 36-step run; chunk 2 poisoned
    until the first rollback, which defers it."""
    from k2hf.demo import DEMO_SPIKES, DRILL_CHUNK

    return {"enabled": True, **DEMO_SPIKES, "drill_poison_chunk": DRILL_CHUNK, "policy": "defer_chunk"}


DRILL_SPIKES = _drill_spikes()


def marked_spans(ids, mask) -> list[list[int]]:
    """The runs of ``ids`` where ``mask`` is set (an assistant mask's replies), in order."""
    spans, current = [], []
    for token, marked in zip(ids, mask):
        if marked:
            current.append(int(token))
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def train_tiny_run(data: Path, out: Path, **recipe_overrides) -> Path:
    """Pretrain a tiny K2 on prepared ``data`` in this process (steps of 2 rows x 64 tokens): the run dir."""
    import yaml

    from k2hf.pretrain.config import load_train_config
    from k2hf.pretrain.launch import run
    from k2hf.pretrain.trainer import reset_accelerate_state

    recipe = {
        "data": str(data), "output_dir": str(out), "global_batch_tokens": 128, "micro_batch_size": 1,
        "precision": "fp32", "seed": 42, "model": {"preset": "tiny", "overrides": {"vocab_size": "auto"}},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2}, "log": {"tensorboard": False},
        **recipe_overrides,
    }
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    try:
        run(load_train_config(path))
    finally:
        reset_accelerate_state()
    return out


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The bundled sample mixture, prepared: 4 chunks of 19 rows x 64 tokens."""
    from k2hf.pretrain.data.config import load_data_config
    from k2hf.pretrain.data.prepare import prepare

    out = tmp_path_factory.mktemp("sample-data") / "data"
    prepare(load_data_config(REPO_ROOT / "pretrain/configs/data/sample.yaml"), out, progress=False)
    return out


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """k2hf's wheel, built from the checkout as it is."""
    from wheel_build import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_bin(wheel, tmp_path_factory) -> Path:
    """The bin dir of a fresh venv with the wheel installed (not the editable checkout)."""
    from wheel_build import install_in_fresh_venv

    return install_in_fresh_venv(wheel, tmp_path_factory.mktemp("wheel-venv") / "venv")


@pytest.fixture(scope="session")
def demo_run(wheel_bin, tmp_path_factory) -> tuple[Path, str]:
    """`k2hf demo` as a new user runs it: the installed wheel's `k2hf`, in an empty folder. Run once for the whole
    suite (the longest single thing in it): its out dir and what it printed. The README's commands
    (tests/test_docs.py) then run on what it left, as a user's would."""
    import subprocess

    folder = tmp_path_factory.mktemp("demo-user")
    result = subprocess.run([str(wheel_bin / "k2hf"), "demo"], cwd=folder, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return folder / "outputs" / "demo", result.stdout


@pytest.fixture(scope="session")
def drill_run(sample_data, tmp_path_factory) -> Path:
    """A run whose chunk 2 is poisoned until the first rollback: malignant spike at steps 19-22, rollback to
    ckpt_002, chunk 2 deferred (order 0, 1, 3, 2); mid-chunk checkpoints every 4 steps (the newest 2 kept)."""
    return train_tiny_run(sample_data, tmp_path_factory.mktemp("drill") / "run", spikes=DRILL_SPIKES,
                          checkpoint={"every_steps": 4})


def pytest_ignore_collect(collection_path, config):
    """transformers' common tests fetch its sdist when collected: leave them out when the slow tier is deselected."""
    if collection_path.name == "test_transformers_common.py" and "not slow" in (config.getoption("markexpr") or ""):
        return True
    return None
