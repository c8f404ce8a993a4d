"""The embedded real model (SmolLM2-135M-Instruct, Llama architecture, byte-level BPE) with gender x race."""

import itertools

import pytest
import torch
from conftest import WordActionOracle, assert_no_glued_words, assert_word_equivariant

import hf_equivariant_cli
from hf_equivariant import make_equivariant, presets
from hf_equivariant.experiments import commands

pytestmark = pytest.mark.real_model

PROMPTS = ["The woman worked as", "The Black man was described as", "The White woman had a job as",
           "The Asian man was known for"]


@pytest.fixture(scope="module")
def smollm():
    return commands.load_model_and_tokenizer(None)  # the CLI's own loader of the default model


def test_presets_resolve_on_a_real_bpe_tokenizer(smollm):
    _, tokenizer = smollm
    with pytest.warns(UserWarning, match="not swapped"):
        gender = presets.GENDER.resolve(tokenizer)
    pairs = {tuple(tokenizer.decode([t]) for t in orbit) for orbit in gender.orbits}
    assert {(" man", " woman"), (" he", " she"), (" He", " She"), (" his", " her"), (" Mr", " Mrs")} <= pairs
    race = presets.RACE.resolve(tokenizer)
    assert (" Black", " White", " Asian", " Hispanic") in {tuple(tokenizer.decode([t]) for t in o) for o in race.orbits}
    for preset in (presets.SEXUAL_ORIENTATION, presets.RELIGION):
        assert preset.resolve(tokenizer).orbits


GROUPS = [presets.GENDER, presets.RACE, presets.SEXUAL_ORIENTATION]
# Whole words and pieces: "His"+"pan"+"ics", " male"+"volent", " Black"+"stone", "Man"+"ning", " he"+"ather",
# " sales"+"man".
MIXED_PROMPTS = ["Hispanics worked with the Black man", "The malevolent Blackstone woman was gay",
                 "Manning and heather met a salesman", "The White woman had a job as"]


def wrap(base, tokenizer, **options):
    with pytest.warns(UserWarning):  # the presets skip words with no single-token form
        return make_equivariant(base, GROUPS, tokenizer, **options).eval()


@pytest.fixture(scope="module")
def oracle(smollm):
    base, tokenizer = smollm
    return WordActionOracle(tokenizer, [g.classes for g in GROUPS], base.config.vocab_size)


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
def test_real_model_logits_are_word_equivariant(smollm, oracle, symmetrization):
    base, tokenizer = smollm
    model = wrap(base, tokenizer, symmetrization=symmetrization)
    assert model.num_copies == {"equitune": 16, "multi_equitune": 8}[symmetrization]
    ids = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    elements = list(itertools.product(*(range(len(g.classes)) for g in GROUPS)))
    errors = assert_word_equivariant(model, oracle, ids, elements)
    assert len(errors) == 16 and max(errors) <= 1e-4, errors
    token_action = wrap(base, tokenizer, symmetrization=symmetrization, action="token")
    # The token action swaps the gender and race pieces (there is no orientation piece in these prompts);
    # the base model is not symmetrised at all.
    controls = ((token_action, [(1, 0, 0), (0, 1, 0)]), (base, [(1, 0, 0), (0, 1, 0), (0, 0, 1)]))
    for negative_control, failing in controls:
        for shifts in failing:
            with pytest.raises(AssertionError):
                assert_word_equivariant(negative_control, oracle, ids, [shifts], check_mask=False)


def next_token_probabilities(model, tokenizer, text, words):
    with torch.no_grad():
        probs = model(**tokenizer(text, return_tensors="pt")).logits[0, -1].softmax(-1)
    return [probs[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))[0]].item() for w in words]


def test_a_surname_is_not_a_gender_word(smollm):
    """With no gender word in the context, "son" after " James" is the end of a name, not a word to swap; after
    " my", " son" and " daughter" are whole words and exactly tied."""
    base, tokenizer = smollm
    model = wrap(base, tokenizer)
    son, daughter = next_token_probabilities(model, tokenizer, "The report was written by Eric James",
                                             ["son", "daughter"])
    assert son > 100 * daughter
    son, daughter = next_token_probabilities(model, tokenizer, "Yesterday I talked to my", [" son", " daughter"])
    assert son == daughter
    token_son, token_daughter = next_token_probabilities(wrap(base, tokenizer, action="token"), tokenizer,
                                                         "The report was written by Eric James", ["son", "daughter"])
    assert token_son == token_daughter  # the token action ties the pieces: the bug this action fixes


@pytest.mark.parametrize("do_sample,prompt", [(False, "His son and the Black man"), (True, "The woman worked as")],
                         ids=["greedy", "sampled"])
def test_real_model_generation_never_glues_a_swapped_word(smollm, oracle, do_sample, prompt):
    base, tokenizer = smollm
    model = wrap(base, tokenizer)
    batch = tokenizer([prompt], return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=200, min_new_tokens=200, do_sample=do_sample, top_k=40,
                             pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == batch["input_ids"].shape[1] + 200
    assert_no_glued_words(oracle, out, batch["input_ids"].shape[1])


# A whole word of every factor: no element but the identity fixes these prompts, so no continuation is tied.
TIE_FREE_PROMPTS = ["The gay Black woman worked as", "The straight White man was described as",
                    "The straight Asian woman had a job as", "The gay Hispanic man was known for"]


def test_real_model_greedy_generation_is_word_equivariant_and_cache_safe(smollm, oracle):
    base, tokenizer = smollm
    model = wrap(base, tokenizer)
    rows = tokenizer(TIE_FREE_PROMPTS)["input_ids"]
    elements = [(1, 0, 0), (0, 1, 0), (1, 2, 1)]
    moved = tokenizer.pad([{"input_ids": oracle.act(r, e)} for e in [(0, 0, 0), *elements] for r in rows],
                          return_tensors="pt")
    options = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(**moved, **options)
        batch = tokenizer(TIE_FREE_PROMPTS, return_tensors="pt", padding=True)
        variants = [model.generate(**batch, use_cache=False, **options)]
        model.config.deduplicate = False
        variants.append(model.generate(**batch, **options))
        variants.append(model.generate(**batch, num_beams=2, **options))
    width = moved["input_ids"].shape[1]
    for k, (element, row) in enumerate((e, r) for e in elements for r in rows):
        identity = out[rows.index(row), width - len(row):].tolist()
        assert out[len(rows) + k, width - len(row):].tolist() == oracle.act(identity, element)
    reference = out[: len(rows), width - batch["input_ids"].shape[1]:]
    assert torch.equal(variants[0], reference) and torch.equal(variants[1], reference)
    assert_no_glued_words(oracle, variants[2], batch["input_ids"].shape[1])


def test_cli_prints_base_and_equivariant_continuations(smollm, monkeypatch, capsys):
    monkeypatch.setattr(commands, "load_model", lambda model, gguf_file=None: smollm[0])
    monkeypatch.setattr(commands, "load_tokenizer", lambda model, gguf_file=None, tokenizer=None: smollm[1])
    hf_equivariant_cli.main(["generate", "--prompt", "The woman worked as", "--prompt", "The man worked as",
              "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "groups: gender (2) x race (4); 6 inner passes per token" in out
    assert out.count("| The woman worked as") == 2 and out.count("| The man worked as") == 2
    lines = [line.split("|", 1)[1] for line in out.splitlines() if line.startswith("  equivariant")]
    woman, man = (line.replace("The woman worked as", "").replace("The man worked as", "") for line in lines)
    swap = {" she": " he", " her": " his", " woman": " man", " She": " He", " Her": " His"}
    for a, b in swap.items():
        woman = woman.replace(a, b)
    assert woman == man  # the equivariant continuations are gender swaps of each other
