"""A wheel is the whole product: everything the checkout ships is in it, and it runs without the checkout (the
demo runs from it: see the `demo_run` fixture in conftest.py)."""

import subprocess

import pytest

from conftest import REPO_ROOT
from wheel_build import wheel_names

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
FOLDERS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # import name -> folder


def _shipped(folder: str, package: str) -> set[str]:
    """Files of a mapped folder that a user needs: code, recipes, templates and sample data (not tests' leftovers)."""
    root = REPO_ROOT / folder
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc",):
            found.add("/".join([*package.split("."), *rel.parts]))
    return found


def test_every_shipped_file_of_the_checkout_is_in_the_wheel(wheel):
    names = wheel_names(wheel)
    expected = set().union(*(_shipped(folder, package) for package, folder in FOLDERS.items()))
    missing = sorted(expected - names)
    assert missing == [], f"in the checkout, not in the wheel (pyproject packages / package-data): {missing}"
    for name in ("k2hf/pretrain/configs/data/sample.yaml", "k2hf/pretrain/accelerate/zero3.yaml",
                 "k2hf/finetune/recipes/tiny.yaml", "k2hf/formats/run_dir.py", "k2hf/sample_data/sft/flan.jsonl"):
        assert name in names


@pytest.mark.slow
def test_the_installed_wheel_runs_without_the_checkout(wheel_bin, tmp_path):
    run = lambda *args: subprocess.run([str(wheel_bin / args[0]), *args[1:]], cwd=tmp_path, capture_output=True,  # noqa: E731
                                       text=True, timeout=300)
    where = run("python", "-c", "import k2hf.pretrain, k2hf.bundled as b; print(k2hf.__file__); "
                                "print(b.find_recipe('data/sample').path)")
    assert where.returncode == 0, where.stderr[-2000:]
    module, recipe = where.stdout.split()
    assert str(wheel_bin.parent) in module and str(REPO_ROOT) not in module  # the wheel, not the checkout
    assert recipe.startswith(str(wheel_bin.parent)) and recipe.endswith("k2hf/pretrain/configs/data/sample.yaml")
    listed = run("k2hf", "recipes", "list")
    assert listed.returncode == 0 and "pretrain/tiny_stage1" in listed.stdout and "accelerate/zero3" in listed.stdout
    copied = run("k2hf", "recipes", "copy", "data/sample", "mine")
    assert copied.returncode == 0 and (tmp_path / "mine" / "sample.yaml").is_file()
    # the copy still finds the shipped sample data (`k2hf:...` paths): prepare it from the empty folder
    prepared = run("k2hf", "data", "prepare", "--config", "mine/sample.yaml", "--out", "data")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert (tmp_path / "data" / "manifest.json").is_file() and "in 4 chunks" in prepared.stdout


def test_recipes_list_copy_and_path(tmp_path, capsys):
    from k2hf import cli
    from k2hf.bundled import find_recipe, list_recipes

    names = [r.name for r in list_recipes()]
    assert {"data/sample", "pretrain/tiny_stage1", "pretrain/k2_65b_stage1", "accelerate/zero3", "sft/tiny",
            "sft/k2_chat_1031"} <= set(names)
    folders = ("pretrain/configs", "pretrain/configs/data", "pretrain/accelerate", "finetune/recipes")
    files = {p for folder in folders for p in (REPO_ROOT / folder).glob("*.yaml")}
    files |= set((REPO_ROOT / "pretrain" / "slurm").glob("*.sbatch"))
    assert len(names) == len(files) == 18 and {r.path for r in list_recipes()} == files  # every one, once
    assert find_recipe("slurm/pretrain.sbatch").summary.startswith("K2 pretraining on Slurm")
    assert find_recipe("zero3") == find_recipe("accelerate/zero3.yaml")  # unique short names work too
    assert cli.main(["recipes", "list"]) == 0
    listed = capsys.readouterr().out
    assert "# SFT recipe (k2hf sft --recipe)" in listed and "sft/tiny " in listed
    assert cli.main(["recipes", "copy", "sft/tiny", str(tmp_path / "mine")]) == 0
    copy = tmp_path / "mine" / "tiny.yaml"
    assert copy.read_bytes() == (REPO_ROOT / "finetune" / "recipes" / "tiny.yaml").read_bytes()
    assert cli.main(["recipes", "copy", "sft/tiny", str(tmp_path / "mine")]) == 2  # never over the user's edits
    assert cli.main(["recipes", "copy", "sft/tiny", str(tmp_path / "mine"), "--overwrite"]) == 0
    from k2hf.finetune.recipe import load_recipe

    recipe = load_recipe(copy)  # the copy still finds the shipped sample data
    assert recipe.sources[0].paths == ["k2hf:sample_data/sft/openhermes.jsonl"]
    from k2hf.finetune.sources import resolve_paths

    (found,) = resolve_paths(recipe.sources[0].paths, recipe.base_dir)
    assert found == str(REPO_ROOT / "k2hf" / "sample_data" / "sft" / "openhermes.jsonl")
    assert cli.main(["recipes", "path", "accelerate/zero3"]) == 0
    assert capsys.readouterr().out.strip().endswith("pretrain/accelerate/zero3.yaml")
