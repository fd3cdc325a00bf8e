"""One recipe system (k2hf.recipes): every recipe and section loads, names its problems with their path, checks
itself when built (from a file, the CLI or code) and raises one error type; CLI flags come from section fields."""

import argparse

import pytest

from conftest import REPO_ROOT
from k2hf.analysis.gallery import GalleryConfig
from k2hf.analysis.memorization import MemorizationConfig
from k2hf.finetune.recipe import SFTRecipe, load_recipe
from k2hf.pretrain.config import OptimSection, SpikeSection, TrainConfig, load_train_config
from k2hf.pretrain.data.config import DataConfig, FimConfig, load_data_config
from k2hf.recipes import RecipeError, add_section_flags, parse_overrides, section_flags

TINY = REPO_ROOT / "pretrain" / "configs" / "tiny_stage1.yaml"
SAMPLE = REPO_ROOT / "pretrain" / "configs" / "data" / "sample.yaml"


@pytest.mark.parametrize("build, message", [
    (lambda: SpikeSection(window=2), r"spikes.window must be at least 4"),
    (lambda: SpikeSection(recovery_steps=5, malignant_steps=5), r"recovery_steps \(5\) must be < "),
    (lambda: SpikeSection(window="8"), r"`window` must be an integer \(got '8'\)"),
    (lambda: OptimSection(lr=1e-4, min_lr=1e-3), r"need 0 <= optim.min_lr <= optim.lr"),
    (lambda: FimConfig(rate=2.0), r"fim.rate must be in \[0, 1\]"),
    (lambda: MemorizationConfig(samples=0), r"--samples and --batch-size must be >= 1"),
    (lambda: GalleryConfig(temperature=-1.0), r"--temperature >= 0"),
])
def test_every_section_checks_itself_when_built_in_code(build, message):
    with pytest.raises(RecipeError, match=message):
        build()


def test_unknown_and_missing_keys_are_named_with_their_path():
    with pytest.raises(RecipeError, match=r"unknown keys in `optim`: \['learning_rate'\]; known: \['beta1'"):
        load_train_config(TINY, {"optim.learning_rate": 1})
    with pytest.raises(RecipeError, match=r"unknown pretraining config keys \['epochs'\]"):
        load_train_config(TINY, {"epochs": 3})
    with pytest.raises(RecipeError, match=r"pretraining config needs `output_dir`"):
        TrainConfig.from_dict({"data": "x"})
    raw = {"tokenizer": "sample", "num_chunks": 2, "subsets": [{"name": "a", "paths": [str(SAMPLE)]}, {"paths": []}]}
    with pytest.raises(RecipeError, match=r"data config needs `subsets\[1\].name`"):
        DataConfig.from_dict(raw)
    raw["subsets"][1] = {"name": "b", "paths": [str(SAMPLE)], "colour": "red"}
    with pytest.raises(RecipeError, match=r"unknown keys in subset 'b': \['colour'\]"):
        DataConfig.from_dict(raw)
    with pytest.raises(RecipeError, match=r"source 'x': `target` must be an integer or null \(got 'many'\)"):
        SFTRecipe.from_dict({"model": "m", "output_dir": "o", "sources": [
            {"name": "x", "kind": "flan", "paths": ["a"], "target": "many"}]})
    with pytest.raises(RecipeError, match=r"`spikes`: `window` must be an integer"):
        load_train_config(TINY, {"spikes.window": "wide"})


def test_overrides_reach_nested_sections_and_lists_become_sections():
    config = load_train_config(TINY, parse_overrides(["optim.lr=3e-3", "spikes.enabled=true", "max_steps=7"]))
    assert (config.optim.lr, config.spikes.enabled, config.max_steps) == (3e-3, True, 7)
    assert isinstance(config.optim, OptimSection) and config.optim.weight_decay == OptimSection().weight_decay
    data = load_data_config(SAMPLE, seed=9)
    assert data.seed == 9 and [type(s).__name__ for s in data.subsets] == ["SubsetConfig"] * 3
    assert data.fim == FimConfig(rate=0.5, spm_rate=0.5)
    with pytest.raises(RecipeError, match=r"`max_steps` must be an integer or null \(got \{'x': 1\}\)"):
        load_train_config(TINY, {"max_steps.x": 1})
    with pytest.raises(RecipeError, match=r"override seed.x: `seed` is not a section"):
        load_train_config(TINY, {"seed.x": 1})
    with pytest.raises(RecipeError, match=r"override 'lr' is not KEY=VALUE"):
        parse_overrides(["lr"])


def test_one_error_type_for_every_recipe():
    problems = []
    for load in (lambda: load_train_config(TINY, {"global_batch_tokens": 0}),
                 lambda: load_data_config(SAMPLE, num_workers=0),
                 lambda: load_recipe(REPO_ROOT / "finetune/recipes/tiny.yaml", {"max_length": 4}),
                 lambda: load_recipe(REPO_ROOT / "missing.yaml")):
        with pytest.raises(RecipeError) as error:
            load()
        problems.append(str(error.value))
    assert problems[:3] == ["micro_batch_size and global_batch_tokens must be positive",
                            "num_workers must be >= 1 (got 0)", "max_length must be >= 16 (got 4)"]
    assert problems[3].startswith("SFT recipe ") and problems[3].endswith("missing.yaml does not exist")


def test_resolve_is_a_local_path_and_resolve_model_keeps_hub_ids(tmp_path):
    recipe = SFTRecipe.from_dict({"model": "LLM360/K2", "output_dir": "out/sft", "base_dir": str(tmp_path),
                                  "sources": [{"name": "x", "kind": "flan", "paths": ["a"]}]})
    assert recipe.resolve(recipe.output_dir) == str(tmp_path / "out" / "sft")  # was taken for a Hub id before
    assert recipe.resolve_model("LLM360/K2") == "LLM360/K2"
    assert recipe.resolve_model("./ckpt") == str(tmp_path / "ckpt")
    assert recipe.resolve_model("runs/stage2/ckpt_020") == str(tmp_path / "runs" / "stage2" / "ckpt_020")
    (tmp_path / "org" / "model").mkdir(parents=True)  # a local folder of a Hub-like name wins
    assert recipe.resolve_model("org/model") == str(tmp_path / "org" / "model")
    assert recipe.resolve("k2hf:sample_data/sft/flan.jsonl") == str(REPO_ROOT / "k2hf/sample_data/sft/flan.jsonl")


def test_cli_flags_come_from_the_fields_and_only_given_ones_override():
    parser = argparse.ArgumentParser()
    add_section_flags(parser, MemorizationConfig)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == {"prompt_tokens", "continuation_tokens", "samples", "seed", "batch_size", "include_untrained"}
    assert flags["samples"].type is int and "(default: 1000)" in flags["samples"].help
    args = parser.parse_args(["--samples", "16", "--include-untrained"])
    assert section_flags(args, MemorizationConfig) == {"samples": 16, "include_untrained": True}
    assert MemorizationConfig(**section_flags(args, MemorizationConfig)) == MemorizationConfig(
        samples=16, include_untrained=True)
