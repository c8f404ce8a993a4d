"""The embedded real model (SmolLM2-135M-Instruct, Llama architecture, byte-level BPE) with gender x race."""


import pytest
import torch
from conftest import assert_no_glued_words
from conftest import wrap as conftest_wrap
from testing_common import Case, EquivariantCommonTester, Setting, Vocabulary, random_head

import hf_equivariant_cli
from hf_equivariant import presets
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
        return conftest_wrap(base, tokenizer, GROUPS, **options)


# A whole word of every factor: no element but the identity fixes these prompts, so no continuation is tied.
TIE_FREE_PROMPTS = ["The gay Black woman worked as", "The straight White man was described as",
                    "The straight Asian woman had a job as", "The gay Hispanic man was known for"]


@pytest.fixture(scope="module")
def vocabulary(smollm):
    base, tokenizer = smollm
    return Vocabulary(tokenizer, [g.classes for g in GROUPS], "word", MIXED_PROMPTS, TIE_FREE_PROMPTS, [],
                      groups=GROUPS, vocab_size=base.config.vocab_size)


@pytest.fixture(scope="module")
def oracle(vocabulary):
    return vocabulary.oracle


class TestSmolLM2(EquivariantCommonTester):
    """The shared tester's checks on the real model (forward: every built-in method, all 16 elements; generation:
    the identity and three elements, one per factor and a product of all three)."""

    ELEMENTS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 2, 1)]

    def wrap(self, case, base=None):
        """The lambda methods get a random head (scaled to the 576-wide hidden state), so lambda differs between
        copies."""
        with pytest.warns(UserWarning):  # the presets skip words with no single-token form
            return random_head(super().wrap(case, base), scale=0.05)

    # copies per input row with gender x race x orientation (orders 2, 4, 2): the full product or the sum
    COPIES = {"equitune": 16, "multi_equitune": 8, "equizero": 16, "multi_equizero": 8, "lambda_equitune": 16,
              "multi_lambda_equitune": 8, "canonicalize": 16}

    @pytest.mark.parametrize("symmetrization", list(COPIES))
    def test_forward_equivariance(self, smollm, vocabulary, symmetrization):
        case = Case(smollm[0], vocabulary, Setting(symmetrization=symmetrization, padding_side="right"))
        assert self.wrap(case).num_copies == self.COPIES[symmetrization]
        self._test_forward_equivariance(case)

    def test_generation_equivariance(self, smollm, vocabulary):
        self._test_generation_equivariance(Case(smollm[0], vocabulary), elements=self.ELEMENTS)

    @pytest.mark.parametrize("deduplicate", [True, False])
    def test_cache_equals_no_cache(self, smollm, vocabulary, deduplicate):
        self._test_cache_equals_no_cache(Case(smollm[0], vocabulary, Setting(deduplicate=deduplicate)))

    def test_batch_equals_single(self, smollm, vocabulary):
        self._test_batch_equals_single(Case(smollm[0], vocabulary))

    def test_beam_search_glues_nothing(self, smollm, vocabulary):
        model = self.wrap(Case(smollm[0], vocabulary, Setting(deduplicate=False)))
        batch = self.forward_inputs(Case(smollm[0], vocabulary), "left", TIE_FREE_PROMPTS)
        out = self.generate(model, Case(smollm[0], vocabulary), batch, num_beams=2, max_new_tokens=16)
        assert_no_glued_words(vocabulary.oracle, out, batch["input_ids"].shape[1])

    def test_the_token_action_fails_the_word_oracle(self, smollm, vocabulary):
        """It swaps the gender and race pieces (there is no orientation piece in these prompts)."""
        case = Case(smollm[0], vocabulary)
        token_action = wrap(*smollm, action="token")
        errors = self.equivariance_errors(token_action, case, self.forward_inputs(case, "right"),
                                          [(1, 0, 0), (0, 1, 0)], check_mask=False)
        assert min(errors.values()) > 1e-2, errors


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
