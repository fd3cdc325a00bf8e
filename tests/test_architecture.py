"""Package structure: no import cycles (function-level imports included) and a self-contained model file."""

import ast
import sys
from pathlib import Path

from conftest import REPO_ROOT

# the import namespace -> folder mapping of pyproject's [tool.setuptools] package-dir
FOLDERS = {"k2hf": "k2hf", "k2hf.modeling": "modeling", "k2hf.pretrain": "pretrain", "k2hf.finetune": "finetune",
           "k2hf.analysis": "analysis"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO_ROOT / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every k2hf module ``name`` imports, at module level or inside functions."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(modules) > 40 and graph["k2hf.pretrain.trainer"] >= {"k2hf.pretrain.spikes"}  # the walk sees edges
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_model_files_import_only_torch_transformers_and_each_other():
    """They ship as remote code inside checkpoints: the standard library, torch, transformers (and its own
    dependency huggingface_hub), and each other; nothing from k2hf."""
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "huggingface_hub"}
    for path in (REPO_ROOT / "modeling").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert node.module.split(".")[0] in allowed, (path.name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and (REPO_ROOT / "modeling" / f"{node.module}.py").is_file(), path.name
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), path.name


def _layer(name: str) -> int:
    """modeling (0) <- core (1) <- pretrain, finetune (2) <- research (3, it studies pretraining's records)
    <- the CLI, its command modules and the demo (4, which nothing but the CLI imports)."""
    if name in ("k2hf.cli", "k2hf.demo") or name.startswith("k2hf.commands"):
        return 4
    if name.startswith("k2hf.analysis"):
        return 3
    if name.startswith(("k2hf.pretrain", "k2hf.finetune")):
        return 2
    return 0 if name.startswith("k2hf.modeling") else 1


def test_dependencies_point_one_way():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            sideways = _layer(name) == _layer(target) == 2 and name.split(".")[1] != target.split(".")[1]
            if _layer(target) > _layer(name) or sideways or target == "k2hf.cli" or (
                    target.startswith("k2hf.commands") and name != "k2hf.cli" and not name.startswith("k2hf.commands")):
                wrong.append(f"{name} -> {target}")
    assert wrong == []
    assert _layer("k2hf.formats.prepared_data") == 1 and _layer("k2hf.pretrain.trainer") == 2  # the rule sees layers


def test_the_spike_detector_is_pure():
    """Numbers in, spikes out: the standard library, numpy and the recipe section; no torch, no files."""
    path = REPO_ROOT / "pretrain" / "spikes" / "detector.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert imported == {"__future__", "math", "collections", "dataclasses", "numpy", "..config"}
    assert "open(" not in path.read_text()
