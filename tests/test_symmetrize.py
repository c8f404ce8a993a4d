"""The functional core against the formulas of method.md, written out as plain loops over group elements."""

import math

import pytest
import torch
from conftest import GENDER_CLASSES, ORIENTATION_CLASSES, RACE_CLASSES, ActionOracle, all_elements

from hf_equivariant import TokenSwapGroup, WordSwapGroup
from hf_equivariant.methods import count_copies
from hf_equivariant.rows import CopyRows
from hf_equivariant.symmetrize import combine, plan_copies, support_lookup, transform_ids

CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]


def toy_model(vocab_size: int):
    """A deterministic, deliberately non-equivariant map ids [B, T] -> logits [B, T, V]."""
    torch.manual_seed(0)
    embed, mix = torch.randn(vocab_size, 16), torch.randn(16, vocab_size)
    return lambda ids: (embed[ids].cumsum(1) * torch.linspace(1, 2, ids.shape[1])[:, None]) @ mix


def pool(outputs, average):
    y = torch.stack([activation(average)(z) for z in outputs]).mean(0)
    return y.log().float() if average == "probs" else y


def activation(average):
    """The quantity averaged (probabilities in float64, as they underflow in float32 for these logits)."""
    return {"log_probs": lambda z: z.log_softmax(-1), "probs": lambda z: z.double().softmax(-1),
            "logits": lambda z: z}[average]


def canonicaliser(tokenizer, classes, vocab_size):
    vocab, canon = tokenizer.get_vocab(), torch.arange(vocab_size)
    for words in classes:
        for j, word in enumerate(words):
            canon[vocab[word]] = vocab[classes[0][j]]
    return canon


def naive_equitune(model, ids, tokenizer, class_lists, average):
    oracle = ActionOracle(tokenizer, class_lists, len(tokenizer), "token")
    perms = [oracle.permutation(g) for g in all_elements(class_lists)]
    return pool([model(p[ids])[..., p] for p in perms], average)


def naive_multi_equitune(model, ids, tokenizer, class_lists, average):
    """1/N sum_i Sym_{-i}(1/|Gi| sum_g g^-1 M(g c_{-i} x)), with Sym over the other factors as a plain mean."""
    vocab_size = len(tokenizer)
    branches = []
    for i, own in enumerate(class_lists):
        others = [c for j, c in enumerate(class_lists) if j != i]
        x = ids
        for classes in others:
            x = canonicaliser(tokenizer, classes, vocab_size)[x]
        outputs = []
        for g in range(len(own)):
            p_g = ActionOracle(tokenizer, [own], len(tokenizer), "token").permutation([g])
            z = model(p_g[x])
            others_oracle = ActionOracle(tokenizer, others, len(tokenizer), "token")
            outputs += [z[..., p_g[others_oracle.permutation(h)]] for h in all_elements(others)]
        branches.append(outputs)
    f = activation(average)
    y = torch.stack([torch.stack([f(z) for z in outs]).mean(0) for outs in branches]).mean(0)
    return y.log().float() if average == "probs" else y


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
@pytest.mark.parametrize("average", ["log_probs", "logits", "probs"])
@pytest.mark.parametrize("num_factors", [1, 2, 3])
def test_plan_matches_the_formula(tokenizer, symmetrization, average, num_factors):
    class_lists = CLASS_LISTS[:num_factors]
    factors = [WordSwapGroup(f"f{i}", c).resolve(tokenizer) for i, c in enumerate(class_lists)]
    plan = plan_copies(factors, symmetrization)
    ids = tokenizer(["the gay Black man was known for his", "she had a White girl ."], return_tensors="pt",
                    padding=True)["input_ids"]
    model = toy_model(len(tokenizer))
    copies = transform_ids(ids, support_lookup(plan.support, len(tokenizer)), plan.input_maps)
    ours = combine(model(copies), plan, CopyRows.every(plan.num_copies, len(ids)), average)
    naive = naive_equitune if symmetrization == "equitune" or num_factors == 1 else naive_multi_equitune
    expected = naive(model, ids, tokenizer, class_lists, average)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("orders", [(2,), (2, 3), (2, 4, 2), (3, 3, 3)])
def test_number_of_copies(orders):
    factors, next_id = [], 0
    for i, n in enumerate(orders):
        orbit = list(range(next_id, next_id + n))
        factors.append(TokenSwapGroup(f"f{i}", "cyclic", [[f"w{t}"] for t in orbit], [orbit], vocab_size=20))
        next_id += n
    assert plan_copies(factors, "equitune").num_copies == math.prod(orders) == count_copies(orders, "equitune")
    expected = sum(orders) if len(orders) > 1 else orders[0]
    assert plan_copies(factors, "multi_equitune").num_copies == expected == count_copies(orders, "multi_equitune")


def test_copy_weights_sum_to_one_and_mixing_preserves_mass(tokenizer):
    factors = [WordSwapGroup(f"f{i}", c).resolve(tokenizer) for i, c in enumerate(CLASS_LISTS)]
    for symmetrization in ("equitune", "multi_equitune"):
        plan = plan_copies(factors, symmetrization)
        assert torch.isclose(plan.weights.sum(), torch.tensor(1.0))
        # each output column on the support reads a total weight of one
        torch.testing.assert_close(plan.mixing.sum(dim=(0, 1)), torch.ones(len(plan.support)))


def test_transform_ids_applies_each_copy(tokenizer):
    factors = [WordSwapGroup(f"f{i}", c).resolve(tokenizer) for i, c in enumerate(CLASS_LISTS[:2])]
    plan = plan_copies(factors, "equitune")
    ids = tokenizer(["the Black man was"], return_tensors="pt")["input_ids"]
    copies = transform_ids(ids, support_lookup(plan.support, len(tokenizer)), plan.input_maps)
    oracle = ActionOracle(tokenizer, CLASS_LISTS[:2], len(tokenizer), "token")
    expected = {tuple(oracle.permutation(g)[ids[0]].tolist())
                for g in all_elements(CLASS_LISTS[:2])}
    assert {tuple(row.tolist()) for row in copies} == expected
    assert copies.shape == (6, ids.shape[1])


def test_unknown_options_are_refused(tokenizer):
    factors = [WordSwapGroup("race", RACE_CLASSES).resolve(tokenizer)]
    with pytest.raises(ValueError, match="unknown symmetrization 'full'"):
        plan_copies(factors, "full")
    plan = plan_copies(factors)
    with pytest.raises(ValueError, match="unknown average 'median'"):
        combine(torch.zeros(3, 2, len(tokenizer)), plan, CopyRows.every(3, 1), "median")


@pytest.mark.parametrize("average", ["log_probs", "logits", "probs"])
def test_distinct_rows_and_blocks_combine_like_every_copy(tokenizer, average):
    factors = [WordSwapGroup(f"f{i}", c).resolve(tokenizer) for i, c in enumerate(CLASS_LISTS)]
    plan = plan_copies(factors, "multi_equitune")
    ids = tokenizer(["the man was known for", "the doctor was", "the gay Black man was known for his"],
                    return_tensors="pt", padding=True)["input_ids"]
    model = toy_model(len(tokenizer))
    copies = transform_ids(ids, support_lookup(plan.support, len(tokenizer)), plan.input_maps)
    expected = combine(model(copies), plan, CopyRows.every(plan.num_copies, len(ids)), average)
    owners = torch.arange(len(copies)) % len(ids)
    rows = CopyRows.distinct(torch.cat([owners[:, None], copies], dim=1), len(ids))
    # of 7 copies each: man/woman; one (no group word); gay Black man/woman, White/Asian man, straight Black man
    assert rows.num_rows == 2 + 1 + 5
    assert torch.equal(copies[rows.representatives][rows.inverse], copies)
    inner = model(copies[rows.representatives])
    torch.testing.assert_close(combine(inner, plan, rows, average), expected, atol=1e-5, rtol=1e-5)
    blocks = (inner[i:i + 2] for i in range(0, rows.num_rows, 2))
    torch.testing.assert_close(combine(blocks, plan, rows, average), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
@pytest.mark.parametrize("average", ["log_probs", "logits"])
def test_an_inner_minus_infinity_stays_where_it_belongs(tokenizer, symmetrization, average):
    """An inner score of -inf on one group token gives -inf where a copy's reading meets it, never NaN (the
    mixing matrix's zeros would otherwise multiply it), and matches the naive formula everywhere."""
    factors = [WordSwapGroup(f"f{i}", c).resolve(tokenizer) for i, c in enumerate(CLASS_LISTS)]
    plan = plan_copies(factors, symmetrization)
    ids = tokenizer(["the gay Black man was known for his"], return_tensors="pt")["input_ids"]
    banned = tokenizer.convert_tokens_to_ids("she")

    def model(x):
        return toy_model(len(tokenizer))(x).index_fill(-1, torch.tensor([banned]), float("-inf"))

    copies = transform_ids(ids, support_lookup(plan.support, len(tokenizer)), plan.input_maps)
    ours = combine(model(copies), plan, CopyRows.every(plan.num_copies, len(ids)), average)
    naive = naive_equitune if symmetrization == "equitune" else naive_multi_equitune
    expected = naive(model, ids, tokenizer, CLASS_LISTS, average)
    assert not ours.isnan().any() and ours.isneginf().any()
    assert torch.equal(ours.isneginf(), expected.isneginf())
    torch.testing.assert_close(ours.masked_fill(ours.isneginf(), 0), expected.masked_fill(expected.isneginf(), 0),
                               atol=1e-5, rtol=1e-5)
