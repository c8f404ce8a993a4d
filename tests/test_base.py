"""The base both wrapper families share (`configuration_base`, `modeling_base`): configs saved before it existed
load unchanged (keys, values, model types and Auto classes), and its no-groups guard names each family's wrapper."""

import json
import re
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification
from transformers import AutoModelForZeroShotImageClassification as AutoZeroShot

from hf_equivariant import (
    EquivariantBaseConfig,
    EquivariantBasePreTrainedModel,
    EquivariantCLIPModel,
    EquivariantConfig,
    EquivariantModelForCausalLM,
    EquivariantModelForImageClassification,
    EquivariantVisionConfig,
)

# config.json files written by the library at 529cae5, before the shared base: a GPT-2 with gender x race
# (word action), a ViT with rot90 x hflip (multi_equizero, max_prob), a CLIP with rot90 x hflip (equitune).
SAVED = Path(__file__).parent / "data" / "configs_before_shared_base"
CASES = {
    "causal": ("hf_equivariant", EquivariantConfig, AutoModelForCausalLM, EquivariantModelForCausalLM),
    "vit": ("hf_equivariant_vision", EquivariantVisionConfig, AutoModelForImageClassification,
            EquivariantModelForImageClassification),
    "clip": ("hf_equivariant_vision", EquivariantVisionConfig, AutoZeroShot, EquivariantCLIPModel),
}


@pytest.mark.parametrize("name", CASES)
def test_configs_saved_before_the_shared_base_load_and_save_unchanged(name, tmp_path):
    model_type, config_class, auto_class, wrapper = CASES[name]
    saved = json.loads((SAVED / name / "config.json").read_text())
    assert saved["model_type"] == model_type
    config = AutoConfig.from_pretrained(SAVED / name)
    assert type(config) is config_class and isinstance(config, EquivariantBaseConfig)
    config.save_pretrained(tmp_path)
    again = json.loads((tmp_path / "config.json").read_text())
    assert again.keys() == saved.keys()
    assert {k: v for k, v in again.items() if k != "transformers_version"} == {
        k: v for k, v in saved.items() if k != "transformers_version"}
    model = auto_class.from_config(config)
    assert type(model) is wrapper and isinstance(model, EquivariantBasePreTrainedModel)
    assert model.config.inner_model_config is getattr(model.config, config.inner_config_field)


def test_wrapper_settings_are_the_fields_each_config_adds():
    shared = ("groups", "symmetrization", "method_options", "average", "base_model", "deduplicate")
    assert EquivariantVisionConfig.wrapper_settings() == (*shared, "inner_config")
    assert EquivariantConfig.wrapper_settings() == (*shared, "text_config", "action", "token_boundaries",
                                                    "max_inner_rows", "use_cache")
    assert EquivariantConfig().average == "log_probs" and EquivariantVisionConfig().average == "probs"
    with pytest.raises(ValueError, match=r"unknown average 'mean', choose one of \('logits', 'log_probs', 'probs'\)"):
        EquivariantVisionConfig(average="mean")


@pytest.mark.parametrize("name", CASES)
def test_the_no_groups_guard_names_the_family(name, tmp_path):
    _, config_class, _, wrapper = CASES[name]
    config = AutoConfig.from_pretrained(SAVED / name)
    config.groups = []
    hint = "make_equivariant(model, groups, tokenizer)" if name == "causal" else "make_equivariant(model, groups=["
    with pytest.raises(ValueError, match=re.escape(f"the config has no groups (groups=[]): an equivariant model needs "
                                                   f"at least one; build it with {hint}")):
        wrapper(config)
