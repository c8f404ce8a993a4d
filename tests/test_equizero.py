"""equizero and multi_equizero: their formulas written out per element, exact equivariance for every element
(also on prompts that some element fixes, where copies tie), copy counts, deduplication, generation, save/load."""

import pytest
import torch
from conftest import (
    BPE_GENDER_CLASSES,
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    ActionOracle,
    all_elements,
    assert_word_equivariant,
    bpe_tokenizer,
    causal_token_errors,
    element_permutation,
    seq2seq_token_errors,
    tiny_gpt2,
    tiny_t5,
    token_generation_mismatches,
)

from hf_equivariant import EquivariantModelForCausalLM, WordSwapGroup, make_equivariant
from hf_equivariant.methods import (
    SYMMETRIZATIONS,
    ArgminWeights,
    CopyScores,
    SymmetrizationMethod,
    full_product_plan,
    register_symmetrization,
)

CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES]
# The last two are fixed by some elements: no race word (fixed by race), no group word at all (fixed by all).
FIXED_PROMPTS = PROMPTS + ["the man was known for his", "the doctor was a kind"]
METHODS = ["equizero", "multi_equizero"]


def wrap(base, tokenizer, symmetrization, **options):
    groups = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
    return make_equivariant(base, groups, tokenizer=tokenizer, symmetrization=symmetrization, **options).eval()


def proxy(log_probs, proxy_loss):
    if proxy_loss == "entropy":
        return -(log_probs.exp() * log_probs).sum(-1)
    return -log_probs.exp().max(-1).values


def select(outputs, losses):
    """Mean of the outputs whose loss is the least (within 1e-5), per row and position."""
    losses = torch.stack(losses)
    chosen = (losses <= losses.min(0).values + 1e-5).float()
    return (torch.stack(outputs) * chosen[..., None]).sum(0) / chosen.sum(0)[..., None]


def canonicaliser(tokenizer, classes):
    vocab, canon = tokenizer.get_vocab(), torch.arange(len(tokenizer))
    for words in classes:
        for j, word in enumerate(words):
            canon[vocab[word]] = vocab[classes[0][j]]
    return canon


def naive_equizero(base, ids, mask, tokenizer, proxy_loss):
    """g*^-1 . log_softmax(M(g* . x)), g* = argmin_g L(M(g . x)) over the product, ties averaged."""
    outputs, losses = [], []
    for g in all_elements(CLASS_LISTS):
        p = element_permutation(tokenizer, CLASS_LISTS, g)
        z = base(input_ids=p[ids], attention_mask=mask).logits.log_softmax(-1)
        outputs.append(z[..., p])
        losses.append(proxy(z, proxy_loss))
    return select(outputs, losses)


def naive_multi_equizero(base, ids, mask, tokenizer, proxy_loss):
    """1/N sum_i Sym_{-i}( equizero over Gi of M on c_{-i}(x) ), Sym_{-i} the mean over h in G_{-i} of h . y."""
    branches = []
    for i, own in enumerate(CLASS_LISTS):
        others = [c for j, c in enumerate(CLASS_LISTS) if j != i]
        x = ids
        for classes in others:
            x = canonicaliser(tokenizer, classes)[x]
        outputs, losses = [], []
        for g in range(len(own)):
            p_g = element_permutation(tokenizer, [own], [g])
            z = base(input_ids=p_g[x], attention_mask=mask).logits.log_softmax(-1)
            outputs.append(torch.stack([z[..., p_g[element_permutation(tokenizer, others, h)]]
                                        for h in all_elements(others)]).mean(0))
            losses.append(proxy(z, proxy_loss))
        branches.append(select(outputs, losses))
    return torch.stack(branches).mean(0)


@pytest.mark.parametrize("proxy_loss", ["entropy", "max_prob"])
@pytest.mark.parametrize("symmetrization", METHODS)
def test_matches_the_formula_and_is_equivariant_for_every_element(base_model, tokenizer, symmetrization, proxy_loss):
    model = wrap(base_model, tokenizer, symmetrization, method_options={"proxy_loss": proxy_loss})
    assert model.num_copies == {"equizero": 6, "multi_equizero": 5}[symmetrization]
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    naive = naive_equizero if symmetrization == "equizero" else naive_multi_equizero
    with torch.no_grad():
        reference = model(**batch).logits
        expected = naive(base_model, batch["input_ids"], batch["attention_mask"], tokenizer, proxy_loss)
        torch.testing.assert_close(reference, expected, atol=1e-4, rtol=1e-4)
        uniform = wrap(base_model, tokenizer, symmetrization.replace("zero", "tune"))(**batch).logits
        assert (reference - uniform).abs().max() > 1e-2  # it selects: not the uniform average
    errors = causal_token_errors(model, tokenizer, CLASS_LISTS, batch)
    assert len(errors) == 6 and max(errors) <= 1e-4


class FirstArgminWeights(ArgminWeights):
    """Negative control: one copy of the argmin set (the first), not all of them."""

    def forward(self, scores: CopyScores) -> torch.Tensor:
        ties = super().forward(scores)
        first = ties.cumsum(0) == 1
        return (ties.bool() & first).float()


def test_picking_one_of_equal_copies_breaks_equivariance_on_fixed_prompts(tokenizer):
    """The prompt without a race word gives three equal copies per gender class: they tie exactly, and only
    averaging over all of them is exact."""
    register_symmetrization(SymmetrizationMethod("test_first_argmin", full_product_plan, "-", "-",
                                                 weights=FirstArgminWeights))
    try:
        base = tiny_gpt2(len(tokenizer))
        batch = tokenizer(["the man was known for his"], return_tensors="pt")
        errors = {name: max(causal_token_errors(wrap(base, tokenizer, name), tokenizer, CLASS_LISTS, batch))
                  for name in ("equizero", "test_first_argmin")}
    finally:
        del SYMMETRIZATIONS["test_first_argmin"]
    assert errors["equizero"] <= 1e-4
    assert errors["test_first_argmin"] > 1e-2


@pytest.mark.parametrize("symmetrization", METHODS)
def test_deduplication_runs_equal_copies_once_and_changes_nothing(tokenizer, symmetrization):
    base = tiny_gpt2(len(tokenizer))
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    rows = []
    handle = base.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    with torch.no_grad():
        deduplicated = wrap(base, tokenizer, symmetrization)(**batch).logits
        every = wrap(base, tokenizer, symmetrization, deduplicate=False)(**batch).logits
    handle.remove()
    copies = {"equizero": 6, "multi_equizero": 5}[symmetrization] * len(FIXED_PROMPTS)
    assert rows[1] == copies and rows[0] < copies
    torch.testing.assert_close(deduplicated, every, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("symmetrization", METHODS)
def test_generation_is_equivariant_and_cache_safe(tokenizer, symmetrization):
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer, symmetrization)
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False))
    beams = dict(max_new_tokens=6, do_sample=False, num_beams=3)
    assert torch.equal(model.generate(**batch, **beams), model.generate(**batch, **beams, use_cache=False))
    assert token_generation_mismatches(model, tokenizer, CLASS_LISTS, batch, max_new_tokens=6, do_sample=False) == []


@pytest.mark.parametrize("symmetrization", METHODS)
def test_word_action_with_a_subword_tokenizer_is_exact_for_every_element(symmetrization):
    """Whole words swapped, pieces of longer words ("Hispanics", "Blackstone") left alone, against the word
    oracle; the prompts lack some factors' words, so copies tie."""
    bpe = bpe_tokenizer()
    class_lists = [BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]
    groups = [WordSwapGroup(f"f{i}", classes) for i, classes in enumerate(class_lists)]
    base = tiny_gpt2(len(bpe))
    model = make_equivariant(base, groups, bpe, symmetrization=symmetrization).eval()
    prompts = ["Hispanics met the Black man", "the malevolent Blackstone saw her son", "Man, he said. His White son"]
    ids = bpe(prompts, return_tensors="pt", padding=True)["input_ids"]
    oracle = ActionOracle(bpe, class_lists, len(bpe))
    assert max(assert_word_equivariant(model, oracle, ids, all_elements(class_lists))) <= 1e-4


@pytest.mark.parametrize("symmetrization", METHODS)
def test_seq2seq_logits_are_equivariant(seq2seq_tokenizer, symmetrization):
    model = wrap(tiny_t5(len(seq2seq_tokenizer)), seq2seq_tokenizer, symmetrization)
    errors = seq2seq_token_errors(model, seq2seq_tokenizer, CLASS_LISTS, FIXED_PROMPTS[:4],
                                  ["a man was", "she had her", "the White boy", "the"])
    assert len(errors) == 6 and max(errors) <= 1e-4


def test_options_are_saved_and_unknown_proxy_losses_refused(tokenizer, tmp_path):
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer, "multi_equizero", method_options={"proxy_loss": "max_prob"})
    model.save_pretrained(tmp_path)
    loaded = EquivariantModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.method_options == {"proxy_loss": "max_prob"} and loaded.copy_weights.proxy_loss == "max_prob"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    card = (tmp_path / "README.md").read_text()  # the multi form cites the multi-group paper and equizero's
    assert "Efficient Model-Agnostic Multi-Group Equivariant Networks" in card
    assert "Efficient Equivariant Transfer Learning from Pretrained Models" in card
    # the default proxy loss is recorded, so a saved model keeps it if the default changes
    assert wrap(tiny_gpt2(len(tokenizer)), tokenizer, "equizero").config.method_options == {"proxy_loss": "entropy"}
    with pytest.raises(ValueError, match="unknown proxy_loss 'median', choose one of .*'entropy'"):
        wrap(tiny_gpt2(len(tokenizer)), tokenizer, "equizero", method_options={"proxy_loss": "median"})


@pytest.mark.parametrize("average", ["logits", "probs"])
@pytest.mark.parametrize("symmetrization", METHODS + ["canonicalize"])
def test_other_averages_are_equivariant_and_blocks_change_nothing(tokenizer, symmetrization, average):
    base = tiny_gpt2(len(tokenizer))
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    model = wrap(base, tokenizer, symmetrization, average=average)
    with torch.no_grad():
        reference = model(**batch).logits
        model.config.max_inner_rows = 4  # several inner calls; the weights see every block
        torch.testing.assert_close(model(**batch, use_cache=False).logits, reference, atol=1e-5, rtol=1e-5)
    errors = causal_token_errors(model, tokenizer, CLASS_LISTS, batch)
    assert len(errors) == 6 and max(errors) <= 1e-4


@pytest.mark.parametrize("symmetrization", METHODS + ["canonicalize"])
def test_the_loss_trains_the_inner_model(tokenizer, symmetrization):
    """Gradients reach the inner model through the selected (or canonical) copies; one step lowers the loss."""
    base = tiny_gpt2(len(tokenizer))
    model = wrap(base, tokenizer, symmetrization).train()
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        loss = model(**batch, labels=labels).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in base.parameters() if p.requires_grad)
        optimizer.step()
    assert losses[1] < losses[0]
