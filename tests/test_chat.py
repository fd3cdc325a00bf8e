"""Chatting: generate_reply, transformers pipeline, `k2hf chat` one-shot and interactive, a new user's first lines."""

import io
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, pipeline

from conftest import TAUGHT_CONVERSATION
from k2hf.chat import chat_loop, generate_reply, load_chat_model

QUESTION = TAUGHT_CONVERSATION[0]["content"]
ANSWER = TAUGHT_CONVERSATION[1]["content"]


def test_generate_reply_reproduces_and_stops_at_eos(taught_chat_dir):
    model, tokenizer = load_chat_model(taught_chat_dir)
    reply = generate_reply(model, tokenizer, [{"role": "user", "content": QUESTION}], max_new_tokens=64)
    assert reply == ANSWER


def test_pipeline_with_chat_messages_stops_at_eos(taught_chat_dir):
    generator = pipeline("text-generation", model=str(taught_chat_dir), device="cpu")
    out = generator([{"role": "user", "content": QUESTION}], max_new_tokens=64, do_sample=False)
    reply = out[0]["generated_text"][-1]
    # the pipeline decodes with skip_special_tokens, which `tokenizers` does not apply to a normalized special
    # token: the released id 2 is one, so its text stays (k2hf's own chat strips eos by id)
    assert reply == {"role": "assistant", "content": ANSWER + " <|endoftext|>"}
    # it stopped at eos: the reply's token count plus eos, far below max_new_tokens
    tokenizer = generator.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    full = generator.model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)
    assert full[0, -1].item() == tokenizer.eos_token_id
    assert full.shape[1] - len(prompt) == len(tokenizer(ANSWER)["input_ids"]) + 1


def _k2hf(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "k2hf.cli", *args], input=stdin, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )


def test_cli_chat_one_shot(taught_chat_dir):
    result = _k2hf("chat", str(taught_chat_dir), "--prompt", QUESTION, "--max-new-tokens", "64")
    assert result.stdout.strip() == ANSWER


def test_cli_chat_interactive_streams_and_resets(taught_chat_dir):
    result = _k2hf("chat", str(taught_chat_dir), "--max-new-tokens", "64",
                   stdin=f"{QUESTION}\n/reset\n{QUESTION}\n/exit\n")
    assert result.stdout.count(f"k2> {ANSWER}") == 2
    assert result.stdout.count("(conversation cleared)") == 1  # /reset says it happened


def test_chat_loop_keeps_history(taught_chat_dir):
    model, tokenizer = load_chat_model(taught_chat_dir)
    lines = iter([QUESTION, "/exit"])
    history = chat_loop(model, tokenizer, read_line=lambda _: next(lines), out=io.StringIO())
    assert history == TAUGHT_CONVERSATION


NEW_USER = """
import k2hf, transformers, torch
model = transformers.AutoModelForCausalLM.from_pretrained(DIR)
tok = transformers.AutoTokenizer.from_pretrained(DIR)
ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=64, do_sample=False)
print(type(model).__name__, repr(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
"""


def test_new_user_loads_and_generates_without_warnings(taught_chat_dir, tmp_path):
    code = NEW_USER.replace("DIR", repr(str(taught_chat_dir))).replace("QUESTION", repr(QUESTION))
    result = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    # skip_special_tokens keeps the released tokenizers' normalized id 2 (a `tokenizers` rule; README, K2-Chat)
    assert result.stdout.strip() == f"K2ForCausalLM {ANSWER + ' <|endoftext|>'!r}"
    noise = [line for line in result.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert not noise, result.stderr
    # the same model and tokenizer also load with AutoModelForCausalLM in this process
    assert type(AutoModelForCausalLM.from_pretrained(taught_chat_dir)).__name__ == "K2ForCausalLM"
