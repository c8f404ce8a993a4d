"""A group may not move a token that generate() treats specially (bos, eos, pad, decoder start): refused when wrapping
and when loading, for causal and seq2seq models."""

import json

import pytest
from conftest import GENDER_CLASSES, tiny_bart, tiny_gpt2, tiny_t5, word_tokenizer
from transformers import AutoModelForCausalLM, GenerationConfig

from hf_equivariant import EquivariantModelForCausalLM, WordSwapGroup, make_equivariant

GROUPS = [WordSwapGroup("gender", GENDER_CLASSES)]
TOKENIZER = word_tokenizer()
SHE = TOKENIZER.convert_tokens_to_ids("she")  # moved by the gender group


def message(name: str) -> str:
    return rf"{name} = .*\b{SHE}\b.* holds token {SHE}, which group 'gender' moves \(orbit \[\d+, {SHE}\]"


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_t5, tiny_bart])
@pytest.mark.parametrize(
    "where, name, value",
    [
        ("config", "bos_token_id", SHE),
        ("config", "eos_token_id", SHE),
        ("config", "pad_token_id", SHE),
        ("config", "decoder_start_token_id", SHE),
        ("generation_config", "bos_token_id", SHE),
        ("generation_config", "eos_token_id", [3, SHE]),  # several stop tokens
        ("generation_config", "pad_token_id", SHE),
        ("generation_config", "decoder_start_token_id", SHE),
    ],
)
def test_a_group_moving_a_special_token_is_refused_when_wrapping(build, where, name, value):
    model = build(len(TOKENIZER))
    setattr(getattr(model, where), name, value)
    with pytest.raises(ValueError, match=message(name)):
        make_equivariant(model, GROUPS, tokenizer=TOKENIZER)


@pytest.mark.parametrize("load", [EquivariantModelForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained])
@pytest.mark.parametrize("file", ["config.json", "generation_config.json"])
def test_a_group_moving_a_special_token_is_refused_when_loading(tmp_path, load, file):
    make_equivariant(tiny_gpt2(len(TOKENIZER)), GROUPS, tokenizer=TOKENIZER).save_pretrained(tmp_path)
    path = tmp_path / file
    saved = json.loads(path.read_text())
    (saved["text_config"] if file == "config.json" else saved)["eos_token_id"] = SHE
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=message("eos_token_id")):
        load(tmp_path)


def test_a_base_checkpoint_whose_special_token_is_a_group_word_is_refused(tmp_path):
    tokenizer = word_tokenizer()
    tokenizer.pad_token = "she"  # e.g. a tokenizer whose padding token is a word
    model = tiny_gpt2(len(tokenizer))
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message("pad_token_id")):
        EquivariantModelForCausalLM.from_pretrained(tmp_path, groups=GROUPS)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_bart])
@pytest.mark.parametrize(
    "name, value",
    [("eos_token_id", SHE), ("eos_token_id", [3, SHE]), ("pad_token_id", SHE), ("bos_token_id", SHE),
     ("decoder_start_token_id", SHE), ("forced_bos_token_id", SHE), ("forced_eos_token_id", SHE)],
)
@pytest.mark.parametrize("given_as", ["keyword", "generation_config"])
def test_generate_refuses_special_ids_that_a_group_moves(build, name, value, given_as):
    """Ids given to generate() itself (as keywords or in a GenerationConfig) are checked like the model's own."""
    model = make_equivariant(build(len(TOKENIZER)), GROUPS, tokenizer=TOKENIZER)
    inputs = TOKENIZER(["the man was a"], return_tensors="pt")
    options = ({name: value} if given_as == "keyword" else
               {"generation_config": GenerationConfig.from_dict({**model.generation_config.to_dict(), name: value})})
    with pytest.raises(ValueError, match=r"generate\(\): .*" + message(name) + r"; the token is a form of a word "
                       r"of class 1, \['woman', 'she', 'her', 'girl'\]"):
        model.generate(**inputs, max_new_tokens=2, **options)
    assert model.generate(**inputs, max_new_tokens=2, eos_token_id=3).shape[0] == 1  # an unmoved id is fine


def test_a_forced_eos_token_that_a_group_moves_is_refused_when_wrapping():
    model = tiny_bart(len(TOKENIZER))
    model.generation_config.forced_eos_token_id = SHE
    with pytest.raises(ValueError, match=message("forced_eos_token_id")):
        make_equivariant(model, GROUPS, tokenizer=TOKENIZER)
