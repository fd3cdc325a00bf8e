"""`k2hf export --to llama` through llama.cpp's own converter (``convert_hf_to_gguf.py`` and its ``gguf``
package, from the llama-cpp-python sdist on the package index; no llama.cpp build): every added token of every
layout reaches the GGUF by name as a control token, with llama.cpp's BOS flag as K2 has it."""

import os
import subprocess
import sys
import tarfile

import pytest
from upstream_sdist import UpstreamUnavailable, cache_root, sdist

from k2hf import build_k2_tokenizer
from k2hf.conversion import export_to_llama
from k2hf.tiny import build_tiny_k2
from k2hf.token_layouts import LAYOUTS
from k2hf.tokenizer import save_tokenizer

pytestmark = pytest.mark.slow

LLAMA_CPP_PYTHON = "0.3.36"  # newest on the index when this was written; its vendored llama.cpp converter
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


@pytest.fixture(scope="module")
def llama_cpp():
    """The vendored llama.cpp folder holding the converter and gguf-py (extracted once)."""
    root = cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}" / "llama.cpp"
    if not (root / "convert_hf_to_gguf.py").is_file():
        try:
            archive_path = sdist("llama-cpp-python", LLAMA_CPP_PYTHON)
        except UpstreamUnavailable as error:
            if os.environ.get("CI"):  # CI reaches the package index: there, not running this is a failure
                raise
            pytest.skip(str(error))
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(archive_path) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(PARTS)]
            for member in members:
                target = root / member.name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    return root


def _read_gguf(llama_cpp, path):
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    reader = gguf.GGUFReader(str(path))

    def value(name):
        field = reader.fields[name]
        strings = field.types[-1] == gguf.GGUFValueType.STRING
        items = [bytes(field.parts[i]).decode() if strings else field.parts[i].tolist()[0] for i in field.data]
        return items if field.types[0] == gguf.GGUFValueType.ARRAY else items[0]

    return value, set(reader.fields), gguf.TokenType.CONTROL


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_export_converts_with_every_added_token_and_k2s_bos(layout, llama_cpp, tiny_tokenizer, tmp_path):
    tokenizer = build_k2_tokenizer(tiny_tokenizer.vocab_file, layout=layout)
    model = build_tiny_k2(tokenizer)
    model.save_pretrained(tmp_path / "k2")
    save_tokenizer(tokenizer, tmp_path / "k2")
    export_to_llama(tmp_path / "k2", tmp_path / "llama")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(llama_cpp / "gguf-py"), str(llama_cpp)])}
    subprocess.run([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(tmp_path / "llama"),
                    "--outfile", str(tmp_path / "k2.gguf"), "--outtype", "f32"], check=True, env=env,
                   capture_output=True, text=True)
    value, fields, control = _read_gguf(llama_cpp, tmp_path / "k2.gguf")
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert len(tokens) == model.config.vocab_size  # the padded embedding rows
    base = len(tokenizer) - len(LAYOUTS[layout].added_tokens)
    for token_id, token in enumerate(LAYOUTS[layout].added_tokens, start=base):
        assert (tokens[token_id], types[token_id]) == (token, control)
    assert tokens[:3] == ["<unk>", "<s>", "<|endoftext|>"]
    assert value("tokenizer.ggml.eos_token_id") == 2
    assert value("tokenizer.ggml.add_bos_token") is (layout == "k2")  # only LLM360/K2's tokenizer adds <s>
    assert ("tokenizer.chat_template" in fields) is LAYOUTS[layout].has_chat
