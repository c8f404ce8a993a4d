"""Symmetrisation methods as plug-ins: the registry, and a method defined here that the library never names.

The plug-in is lambda-equitune written in this file: y = sum_g lambda(g.x) g^-1.M(g.x) / sum_g lambda(g.x), with
lambda = softplus of a linear head on the inner model's last hidden state of each copy, per position. Its head is
the wrapper's own parameters. It is checked against the formula computed here from the base model, for exact
equivariance for every group element (causal and seq2seq, logits and generation), and through save/load.
"""

import pytest
import torch
from conftest import (
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    all_elements,
    causal_token_errors,
    element_permutation,
    seq2seq_token_errors,
    tiny_gpt2,
    tiny_t5,
    token_generation_mismatches,
    word_tokenizer,
)
from torch import nn

from hf_equivariant import EquivariantConfig, EquivariantModelForCausalLM, WordSwapGroup, make_equivariant
from hf_equivariant.methods import (
    SYMMETRIZATIONS,
    CopyScores,
    CopyWeights,
    SymmetrizationMethod,
    full_product_plan,
    get_symmetrization,
    register_symmetrization,
)

CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES]
NAME = "test_lambda_equitune"


class HiddenStateWeights(CopyWeights):
    """lambda(g.x) = softplus(w . h + b), h the inner model's last hidden state of copy g.x at each position."""

    uses_hidden_states = True

    def __init__(self, config: EquivariantConfig, scale: float = 1.0):
        super().__init__()
        self.head = nn.Linear(config.text_config.get_text_config(decoder=True).hidden_size, 1)
        with torch.no_grad():  # far from uniform, so that the test tells it from equitune
            self.head.weight.normal_(0, scale)

    def forward(self, scores: CopyScores) -> torch.Tensor:
        return scores.per_copy(nn.functional.softplus(self.head(scores.hidden_states)).squeeze(-1))


class CopyIndexWeights(CopyWeights):
    """Negative control: weights that depend on the copy's index, not on its outputs (not equivariant)."""

    def __init__(self, config: EquivariantConfig):
        super().__init__()

    def forward(self, scores: CopyScores) -> torch.Tensor:
        return scores.per_copy(torch.ones_like(scores.log_probs[..., 0])) * torch.arange(
            1.0, scores.num_copies + 1).view(-1, *[1] * (scores.log_probs.dim() - 1))


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_symmetrization(SymmetrizationMethod(NAME, full_product_plan, "A test file (2026)",
                                                 "lambda-weighted equitune", weights=HiddenStateWeights,
                                                 trainable=True))
    register_symmetrization(SymmetrizationMethod("test_copy_index", full_product_plan, "-", "negative control",
                                                 weights=CopyIndexWeights))
    yield
    del SYMMETRIZATIONS[NAME], SYMMETRIZATIONS["test_copy_index"]


def wrap(base, tokenizer, symmetrization=NAME):
    groups = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
    return make_equivariant(base, groups, tokenizer=tokenizer, symmetrization=symmetrization).eval()


def test_unknown_names_list_the_registered_methods(tokenizer):
    with pytest.raises(ValueError, match=f"unknown symmetrization 'nope', choose one of .*'equitune'.*'{NAME}'"):
        get_symmetrization("nope")
    with pytest.raises(ValueError, match="unknown symmetrization 'nope'"):
        wrap(tiny_gpt2(len(tokenizer)), tokenizer, "nope")
    with pytest.raises(ValueError, match="already registered"):
        register_symmetrization(get_symmetrization("equitune"))


def test_copies_per_input_row():
    for orders in [(2,), (2, 3), (2, 4, 2)]:
        product, total = torch.tensor(orders).prod().item(), sum(orders)
        assert get_symmetrization("equitune").num_copies(orders) == product
        assert get_symmetrization("multi_equitune").num_copies(orders) == (total if len(orders) > 1 else product)
        assert get_symmetrization(NAME).num_copies(orders) == product


def naive_lambda_equitune(base, head, ids, mask, tokenizer):
    """sum_g lambda(g.x) log_softmax(M(g.x))[..., p_g] / sum_g lambda(g.x), one element at a time."""
    terms, lambdas = [], []
    for g in all_elements(CLASS_LISTS):
        p = element_permutation(tokenizer, CLASS_LISTS, g)
        out = base(input_ids=p[ids], attention_mask=mask, output_hidden_states=True)
        lambdas.append(nn.functional.softplus(head(out.hidden_states[-1])))
        terms.append(out.logits.log_softmax(-1)[..., p])
    lambdas = torch.stack(lambdas)
    return (torch.stack(terms) * lambdas).sum(0) / lambdas.sum(0)


def test_plugin_matches_its_formula_and_is_equivariant_for_every_element(base_model, tokenizer):
    model = wrap(base_model, tokenizer)
    assert model.num_copies == 6 and sum(p.numel() for p in model.copy_weights.parameters()) > 0
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**batch).logits
        expected = naive_lambda_equitune(base_model, model.copy_weights.head, batch["input_ids"],
                                         batch["attention_mask"], tokenizer)
        torch.testing.assert_close(reference, expected, atol=1e-4, rtol=1e-4)
        uniform = wrap(base_model, tokenizer, "equitune")(**batch).logits
        assert (reference - uniform).abs().max() > 1e-2  # the weights are not uniform
    errors = causal_token_errors(model, tokenizer, CLASS_LISTS, batch)
    control_errors = causal_token_errors(wrap(base_model, tokenizer, "test_copy_index"), tokenizer, CLASS_LISTS, batch)
    assert len(errors) == 6 and max(errors) <= 1e-4
    assert max(control_errors) > 1e-2  # negative control: weights by copy index break equivariance


def test_plugin_generation_is_equivariant(tokenizer):
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False))
    assert token_generation_mismatches(model, tokenizer, CLASS_LISTS, batch, max_new_tokens=6, do_sample=False) == []


def test_plugin_on_a_seq2seq_model_is_equivariant(seq2seq_tokenizer):
    model = wrap(tiny_t5(len(seq2seq_tokenizer)), seq2seq_tokenizer)
    errors = seq2seq_token_errors(model, seq2seq_tokenizer, CLASS_LISTS, PROMPTS,
                                  ["a man was", "she had her", "the White boy"])
    assert len(errors) == 6 and max(errors) <= 1e-4


def test_plugin_weights_are_saved_and_loaded(tokenizer, tmp_path):
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer)
    model.save_pretrained(tmp_path)
    loaded = EquivariantModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.symmetrization == NAME
    torch.testing.assert_close(loaded.copy_weights.head.weight, model.copy_weights.head.weight, atol=0, rtol=0)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    card = (tmp_path / "README.md").read_text()
    assert "A test file (2026)" in card and "lambda-weighted equitune" in card


@pytest.mark.parametrize("kind", ["cyclic", "symmetric"])
def test_the_class_listed_first_changes_only_the_multi_forms_and_canonicalize(kind):
    """`with_class_first` keeps the group: the full-product methods give the same model (lambda with a non-zero
    head too); the multi forms and canonicalize read class 0, so a negative control shows they change."""
    tokenizer = word_tokenizer()
    base = tiny_gpt2(len(tokenizer)).eval()
    batch = tokenizer(PROMPTS + ["the straight Asian girl was known for her"], return_tensors="pt", padding=True)
    classes = [("gender", GENDER_CLASSES, "woman"), ("race", RACE_CLASSES, "White"),
               ("orientation", ORIENTATION_CLASSES, "straight")]
    listed = [WordSwapGroup(name, words, kind=kind) for name, words, _ in classes]
    rotated = [group.with_class_first(first) for group, (_, _, first) in zip(listed, classes)]
    assert [group.classes[0][0] for group in rotated] == ["woman", "White", "straight"]
    real = batch["attention_mask"].bool()
    full_product, reading_class_zero = ("equitune", "equizero", "lambda_equitune"), (
        "multi_equitune", "multi_equizero", "multi_lambda_equitune", "canonicalize")
    for method in full_product + reading_class_zero:
        models = [make_equivariant(base, groups, tokenizer, method).eval() for groups in (listed, rotated)]
        if method.endswith("lambda_equitune"):  # a non-uniform head, the same in both
            torch.manual_seed(1)
            weight = torch.randn_like(models[0].copy_weights.head.weight) / 2
            for model in models:
                with torch.no_grad():
                    model.copy_weights.head.weight.copy_(weight)
                    model.copy_weights.head.bias.fill_(0.3)
        with torch.no_grad():
            difference = (models[0](**batch).logits - models[1](**batch).logits)[real].abs().max().item()
        if method in reading_class_zero:
            assert difference > 1e-2, method
        else:
            assert difference < 1e-5, method
