"""Save / load round trips, Auto classes, remote code, push_to_hub (mocked Hub) and the model card."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    ALL_ARCHITECTURES,
    GENDER_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    SEQ2SEQ_ARCHITECTURES,
    ActionOracle,
    all_elements,
    tiny_gpt2,
)
from transformers import AutoConfig, AutoModelForCausalLM

from hf_equivariant import (
    EquiGPT2LMHeadModel,
    EquivariantConfig,
    EquivariantModelForCausalLM,
    WordSwapGroup,
    make_equivariant,
    presets,
)

GROUPS = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]


@pytest.fixture
def model(base_model, tokenizer):
    return make_equivariant(base_model, GROUPS, tokenizer=tokenizer).eval()


@pytest.fixture
def batch(tokenizer):
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


def front_matter(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---")[1])


def test_round_trip_gives_identical_logits_and_restores_groups(model, batch, tmp_path):
    model.save_pretrained(tmp_path)
    loaded, info = EquivariantModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.factors == model.config.factors
    for name in ("plan_support", "plan_lookup", "plan_input_maps", "plan_weights", "plan_mixing"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_equivariant"
    assert saved["groups"][0]["classes"] == GENDER_CLASSES
    assert saved["text_config"]["model_type"] == model.config.text_config.model_type


def test_auto_classes_load_the_wrapper(model, batch, tmp_path):
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), EquivariantConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is EquivariantModelForCausalLM
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_symmetrization_can_be_changed_on_load(model, batch, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = EquivariantModelForCausalLM.from_pretrained(tmp_path, symmetrization="equitune")
    assert loaded.config.symmetrization == "equitune" and loaded.num_copies == 6
    expected = make_equivariant(model.model, model.config.factors, tokenizer, symmetrization="equitune")  # resolved
    torch.testing.assert_close(loaded(**batch).logits, expected(**batch).logits)


def test_loading_in_bfloat16_keeps_index_buffers_integral(model, batch, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = EquivariantModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.plan_input_maps.dtype == torch.long and loaded.plan_lookup.dtype == torch.long
    assert loaded(**batch).logits.isfinite().all()


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "mamba", "t5"])
def test_resized_vocabulary_gets_a_new_plan_and_round_trips(tokenizer, architecture, tmp_path):
    """resize_token_embeddings: the groups and plan follow the new vocabulary (no group moves the new tokens),
    the model stays equivariant on inputs holding them and loads back; cutting off a group's token is refused."""
    model = make_equivariant({**ALL_ARCHITECTURES, **SEQ2SEQ_ARCHITECTURES}[architecture](len(tokenizer)), GROUPS,
                             tokenizer=tokenizer).eval()
    vocab_size = len(tokenizer) + 5
    model.resize_token_embeddings(vocab_size)
    assert model.config.text_config.vocab_size == vocab_size and model.plan_lookup.shape == (vocab_size,)
    assert all(f.vocab_size == vocab_size for f in model.config.factors)
    ids = torch.cat([tokenizer(PROMPTS[:1], return_tensors="pt")["input_ids"], torch.tensor([[vocab_size - 2]])], 1)

    def logits(model, ids):
        decoder = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
        return model(input_ids=ids, **decoder).logits

    reference = logits(model, ids)
    assert reference.shape[-1] == vocab_size
    oracle = ActionOracle(tokenizer, [GENDER_CLASSES, RACE_CLASSES], vocab_size, "token")
    for g in all_elements([GENDER_CLASSES, RACE_CLASSES]):
        p = oracle.permutation(g)
        torch.testing.assert_close(logits(model, p[ids])[..., p], reference, atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.plan_lookup.shape == (vocab_size,)
    torch.testing.assert_close(logits(loaded, ids), reference)
    last = int(model.plan_support.max())
    with pytest.raises(ValueError, match=f"the groups \\['gender', 'race'\\] move token {last}"):
        model.resize_token_embeddings(last)


@pytest.fixture
def base_checkpoint(tokenizer, tmp_path):
    folder = tmp_path / "base"
    tiny_gpt2(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("cls", [EquivariantModelForCausalLM, EquiGPT2LMHeadModel])
def test_from_pretrained_base_checkpoint_with_groups(cls, base_checkpoint, tokenizer, batch):
    model = cls.from_pretrained(base_checkpoint, groups=GROUPS)  # tokenizer loaded from the same folder
    assert type(model) is cls
    reference = make_equivariant(tiny_gpt2(len(tokenizer)), GROUPS, tokenizer=tokenizer)
    assert torch.equal(model(**batch).logits, reference(**batch).logits)
    assert model.config.base_model == str(base_checkpoint)


def test_from_pretrained_errors(base_checkpoint, model, tmp_path):
    with pytest.raises(ValueError, match="plain gpt2 checkpoint: pass groups="):
        EquivariantModelForCausalLM.from_pretrained(base_checkpoint)
    model.save_pretrained(tmp_path / "eq")
    with pytest.raises(ValueError, match="already equivariant"):
        EquivariantModelForCausalLM.from_pretrained(tmp_path / "eq", groups=GROUPS)


def test_config_must_match_the_inner_vocabulary(model):
    groups = [f.to_dict() for f in model.config.factors]
    with pytest.raises(ValueError, match="vocabulary of 56 tokens but the model has 100"):
        EquivariantConfig(text_config={"model_type": "gpt2", "vocab_size": 100}, groups=groups)
    with pytest.raises(ValueError, match="unknown symmetrization"):
        EquivariantConfig(symmetrization="full")


LOADERS = [EquivariantModelForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained]


def edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize("edit", [lambda c: c.update(groups=None), lambda c: c.update(groups=[]),
                                  lambda c: c.pop("groups")])
def test_a_config_without_groups_is_refused_at_load(model, tmp_path, load, edit):
    model.save_pretrained(tmp_path)
    edit_config(tmp_path, edit)
    with pytest.raises(ValueError, match=r"the config has no groups \(groups=(None|\[\])\)"):
        load(tmp_path)
    with pytest.raises(ValueError, match="the config has no groups"):
        EquivariantModelForCausalLM(EquivariantConfig(text_config=model.config.text_config))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda race: race["classes"].append(["Hispanic"]), r"orbit 0 \[\d+, \d+, \d+\] has 3 tokens but .* 4 classes"),
        (lambda race: race["classes"].pop(), "has 3 tokens but the group has 2 classes .* disagree"),
        (lambda race: race.update(classes=["Black", "White", "Asian"]), "each class must be a list or tuple of words"),
        (lambda race: race["classes"][0].append("Latino"), "aligned word lists of equal length"),
        (lambda race: race.update(orbits=[]), "'race' has no token orbits"),
    ],
)
def test_saved_classes_must_agree_with_the_orbits(model, tmp_path, edit, message):
    model.save_pretrained(tmp_path)
    edit_config(tmp_path, lambda config: edit(config["groups"][1]))
    for load in LOADERS:
        with pytest.raises(ValueError, match=message):
            load(tmp_path)


# Every setting EquivariantConfig adds, given as a keyword on loading.
OVERRIDES = dict(symmetrization="equitune", average="probs", deduplicate=False, max_inner_rows=2, use_cache=False,
                 base_model="user/base")


def check_overrides(loaded, batch):
    assert {name: getattr(loaded.config, name) for name in OVERRIDES} == OVERRIDES
    assert loaded.num_copies == 6
    # resolved groups, no tokenizer: the token action, the same as the word action with a word-level tokenizer
    reference = make_equivariant(loaded.model, loaded.config.factors, symmetrization="equitune", average="probs",
                                 action="token")
    torch.testing.assert_close(loaded(**batch).logits, reference(**batch).logits)


@pytest.mark.parametrize("load", LOADERS)
def test_config_settings_override_the_saved_ones_on_load(model, batch, tmp_path, load):
    model.save_pretrained(tmp_path)
    check_overrides(load(tmp_path, **OVERRIDES), batch)


@pytest.mark.parametrize("switch_to, options, expected_options", [
    ("equizero", None, {"proxy_loss": "entropy"}),
    ("equizero", {"proxy_loss": "max_prob"}, {"proxy_loss": "max_prob"}),
    ("multi_equitune", None, None),
    ("lambda_equitune", None, None),
])
@pytest.mark.parametrize("load", ["wrapper", "auto"])
def test_changing_the_method_on_load_drops_the_saved_methods_options(base_model, batch, tokenizer, tmp_path, load,
                                                                     switch_to, options, expected_options):
    """The saved options are the saved method's own (multi_lambda_equitune's branch_weights): the new method gets
    the options given on loading, else its defaults, and is the model make_equivariant builds with them."""
    saved = make_equivariant(base_model, GROUPS, tokenizer, "multi_lambda_equitune",
                             method_options={"branch_weights": "fixed"})
    saved.save_pretrained(tmp_path)
    given = {} if options is None else {"method_options": options}
    loader = {"wrapper": EquivariantModelForCausalLM, "auto": AutoModelForCausalLM}[load]
    loaded = loader.from_pretrained(tmp_path, symmetrization=switch_to, **given).eval()
    assert loaded.config.symmetrization == switch_to and loaded.config.method_options == expected_options
    expected = make_equivariant(saved.model, saved.config.factors, tokenizer, switch_to, **given).eval()
    assert torch.equal(loaded(**batch).logits, expected(**batch).logits)


def test_config_settings_apply_to_a_base_checkpoint(base_checkpoint, batch):
    loaded = EquivariantModelForCausalLM.from_pretrained(base_checkpoint, groups=GROUPS, **OVERRIDES)
    check_overrides(loaded, batch)
    assert not hasattr(loaded.model.config, "deduplicate")  # the settings are the wrapper's, not the inner model's


def test_remote_code_loads_without_the_library(model, batch, tmp_path, monkeypatch):
    monkeypatch.setattr(EquivariantConfig, "_auto_class", None)
    monkeypatch.setattr(EquivariantModelForCausalLM, "_auto_class", None)
    EquivariantConfig.register_for_auto_class()
    EquivariantModelForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_causal.EquivariantModelForCausalLM"
    torch.save({"batch": dict(batch), "logits": model(**batch).logits}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
sys.modules["hf_equivariant"] = None   # the library is not installed here
from transformers import AutoModelForCausalLM
path = {str(tmp_path)!r}
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
expected = torch.load(path + "/expected.pt")
assert torch.equal(model(**expected["batch"]).logits, expected["logits"])
print("remote code ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "remote code ok" in result.stdout, result.stderr[-3000:]


def test_push_to_hub_uploads_the_model_and_its_card(model, batch, mocked_hub):
    model.config.base_model = "openai-community/gpt2"
    model.push_to_hub("user/equi-gpt2", tags=["fairness"])
    assert {"README.md", "config.json", "generation_config.json", "model.safetensors"} <= set(os.listdir(mocked_hub))
    loaded = EquivariantModelForCausalLM.from_pretrained(mocked_hub)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    meta = front_matter(mocked_hub / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["base_model"] == "openai-community/gpt2"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"hf-equivariant", "equivariance", "multi_equitune", "group:gender", "group:race", "fairness"} <= set(
        meta["tags"])
    body = (mocked_hub / "README.md").read_text()
    assert "man, he, his, boy" in body and "woman, she, her, girl" in body and "Black" in body
    assert ("Inner forward passes per input: **5** (per method: equitune 6, multi_equitune 5, equizero 6, "
            "multi_equizero 5, canonicalize 1, lambda_equitune 6, multi_lambda_equitune 5)") in body
    assert "Efficient Model-Agnostic Multi-Group Equivariant Networks" in body  # the method's citation
    assert "Trainable weights" not in body  # multi_equitune has none
    assert 'AutoModelForCausalLM.from_pretrained("user/equi-gpt2")' in body
    assert "## Intended use" in body and "## Limitations" in body


def test_save_pretrained_writes_the_card_and_can_push(model, mocked_hub, tmp_path):
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="user/equi")
    meta = front_matter(tmp_path / "local" / "README.md")
    assert "group:gender" in meta["tags"] and "base_model" not in meta  # a local base is not a Hub id
    assert "group:race" in front_matter(mocked_hub / "README.md")["tags"]


USER_CARD = "---\nlicense: mit\nbase_model: someone/base\ntags:\n- mine\n---\n\n# My model\n\nMy own words.\n"


@pytest.mark.parametrize("user_card", [USER_CARD, "# My model\n\nMy own words.\n"], ids=["metadata", "no-metadata"])
def test_save_pretrained_merges_the_groups_into_a_card_the_user_wrote(model, tokenizer, tmp_path, user_card):
    readme = tmp_path / "README.md"
    readme.write_text(user_card)
    model.save_pretrained(tmp_path)
    race_only = make_equivariant(model.model, [WordSwapGroup("race", RACE_CLASSES)], tokenizer=tokenizer)
    race_only.save_pretrained(tmp_path)  # a second save updates the section it added, once
    text = readme.read_text()
    assert text.count("My own words.") == 1 and text.count("## Groups") == 1 and "hf-equivariant:groups" in text
    assert "### `race`" in text and "### `gender`" not in text
    meta = front_matter(readme)
    assert {"hf-equivariant", "group:race", "group:gender"} <= set(meta["tags"])  # tags are only ever added
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    if user_card == USER_CARD:
        assert meta["license"] == "mit" and meta["base_model"] == "someone/base" and "mine" in meta["tags"]


def test_push_to_hub_keeps_the_card_the_user_has_on_the_hub(model, tokenizer, mocked_hub):
    (mocked_hub / "README.md").write_text(USER_CARD)
    model.push_to_hub("user/equi")
    race_only = make_equivariant(model.model, [WordSwapGroup("race", RACE_CLASSES)], tokenizer=tokenizer)
    race_only.push_to_hub("user/equi")  # a second push updates the section the first one added
    text = (mocked_hub / "README.md").read_text()
    assert text.count("My own words.") == 1 and text.count("## Groups") == 1 and "### `race`" in text
    meta = front_matter(mocked_hub / "README.md")
    assert meta["license"] == "mit" and meta["base_model"] == "someone/base"
    assert {"mine", "hf-equivariant", "group:race", "group:gender"} <= set(meta["tags"])


def test_a_card_we_wrote_is_rewritten_until_the_user_claims_it(model, tokenizer, tmp_path):
    readme = tmp_path / "README.md"
    model.save_pretrained(tmp_path)
    race_only = make_equivariant(model.model, [WordSwapGroup("race", RACE_CLASSES)], tokenizer=tokenizer)
    race_only.save_pretrained(tmp_path)
    assert readme.read_text() == str(race_only.model_card())  # ours: rewritten whole
    # deleting the "Written by hf-equivariant" comment makes the card the user's
    claimed = re.sub(r"<!-- Written by hf-equivariant.*?-->", "", readme.read_text(), flags=re.DOTALL)
    readme.write_text(claimed + "\nMy notes.\n")
    model.save_pretrained(tmp_path)
    text = readme.read_text()
    assert "My notes." in text and text.count("## Groups") == 1 and "### `gender`" in text
    assert "Written by hf-equivariant" not in text


def test_presets_card_lists_every_group(tokenizer, base_model):
    with pytest.warns(UserWarning):
        model = make_equivariant(base_model, [presets.GENDER, presets.RACE, presets.SEXUAL_ORIENTATION],
                                 tokenizer=tokenizer, symmetrization="equitune")
    text = str(model.model_card())
    assert "order 16" in text and "sexual_orientation" in text and "Inner forward passes per input: **16**" in text
