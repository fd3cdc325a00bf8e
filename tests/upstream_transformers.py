"""transformers' own common model tests, from the sdist of the installed transformers (never copied here).

The sdist on the package index ships ``tests/test_modeling_common.py`` and ``tests/test_configuration_common.py``
but not the three modules they import (``tests/generation/test_utils.py``, ``tests/exporters/test_export.py``,
``tests/utils/test_configuration_utils.py``). Those get minimal stand-ins written here: the generation mixin
is a marker (tests/test_generation.py checks K2's decoding against stock LLaMA token for token), the export
mixin adds no test, and the common config kwargs are a few of ``PreTrainedConfig``'s own.

The sdist is fetched once per version (:func:`upstream_sdist.sdist`).
"""

from __future__ import annotations

import importlib
import sys
import tarfile
from pathlib import Path

import transformers
from upstream_sdist import UpstreamUnavailable, cache_root, sdist

PACKAGE = "transformers_upstream_tests"
NEEDED = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
STAND_INS = {
    "__init__.py": "",
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stand-in: the sdist lacks tests/generation/. A marker class only."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stand-in: the sdist lacks tests/exporters/. Adds no test."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": (
        '"""Stand-in: the sdist lacks tests/utils/. Common PreTrainedConfig kwargs and values to set them to."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n    "output_hidden_states": True,\n    "output_attentions": True,\n'
        '    "dtype": "float16",\n    "chunk_size_feed_forward": 5,\n    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n    "label2id": {"label": "0"},\n    "problem_type": "regression",\n'
        "}\n"
    ),
}


def upstream_tests(version: str = transformers.__version__) -> Path:
    """The folder holding ``transformers_upstream_tests`` for ``version`` (fetched and laid out on first use)."""
    root = cache_root() / version
    package = root / PACKAGE
    if (package / "test_modeling_common.py").is_file():
        return root
    with tarfile.open(sdist("transformers", version)) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
        missing = [name for name in NEEDED if name not in members]
        if missing:
            raise UpstreamUnavailable(f"the transformers {version} sdist does not ship {missing}")
        package.mkdir(parents=True, exist_ok=True)
        for name in NEEDED:
            (package / Path(name).name).write_bytes(archive.extractfile(members[name]).read())
    for name, text in STAND_INS.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return root


def import_upstream(module: str):
    """Import ``transformers_upstream_tests.<module>`` for the installed transformers."""
    root = str(upstream_tests())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"{PACKAGE}.{module}")
