"""Image groups, their products and canonicalisers, and the invariant symmetrisation, against a numpy oracle."""

import itertools

import numpy as np
import pytest
import torch
from conftest import RACE_CLASSES
from torch import nn

from hf_equivariant import ImageGroup, SymmetryGroup, WordSwapGroup
from hf_equivariant.image_groups import canonicalize, commute, gather_pixels, pixel_tables, resolve_image_groups
from hf_equivariant.image_symmetrize import combine, distinct_rows, image_copies, image_plan
from hf_equivariant.methods import (
    SYMMETRIZATIONS,
    CopyScores,
    CopyWeights,
    SymmetrizationMethod,
    full_product_plan,
    get_symmetrization,
    per_factor_plan,
    register_symmetrization,
)

# The registered methods the image wrappers run, each through the same registry path: the paper's four and
# frame canonicalisation (one pass on the canonical image).
METHODS = ("equitune", "multi_equitune", "equizero", "multi_equizero", "canonicalize")

# The oracle: each kind's elements written with numpy, independently of the library's pixel tables.
ORACLE = {
    "rot90": [lambda a, k=k: np.rot90(a, k, axes=(-2, -1)) for k in range(4)],
    "rot180": [lambda a: a, lambda a: np.rot90(a, 2, axes=(-2, -1))],
    "hflip": [lambda a: a, lambda a: a[..., ::-1]],
    "vflip": [lambda a: a, lambda a: a[..., ::-1, :]],
}
PRODUCTS = [["rot90", "hflip"], ["vflip", "rot90"], ["hflip", "vflip"], ["rot180", "hflip"], ["rot90"], ["hflip"]]


def oracle_elements(kinds):
    """Every element of the product as a function on torch tensors: g1 o g2 o ... (the last factor first)."""
    def element(ks):
        def apply(x):
            a = x.numpy()
            for kind, k in reversed(list(zip(kinds, ks))):
                a = ORACLE[kind][k](a)
            return torch.from_numpy(np.ascontiguousarray(a))
        return apply
    return [element(ks) for ks in itertools.product(*(range(len(ORACLE[kind])) for kind in kinds))]


def images(seed=0, size=5):
    """Generic images, and images fixed by some element: mirror-symmetric, rotation-symmetric, constant."""
    torch.manual_seed(seed)
    x = torch.randn(2, 2, size, size)
    mirrored = x[:1] + x[:1].flip(-1)
    rotated = sum(torch.rot90(x[1:], k, dims=(-2, -1)) for k in range(4))
    return torch.cat([x, mirrored, rotated, torch.ones(1, 2, size, size)])


def test_each_kind_acts_as_the_oracle_and_as_a_group():
    x = torch.randn(2, 3, 4, 4)
    for kind in ORACLE:
        group = ImageGroup(kind)
        copies = group.act(x, torch.arange(group.order))
        assert copies.shape == (group.order, *x.shape)
        for k, element in enumerate(oracle_elements([kind])):
            assert torch.equal(copies[k], element(x))
        assert torch.equal(copies[0], x)
        seen = {tuple(c.flatten().tolist()) for c in copies}
        assert len(seen) == group.order  # faithful
        for c in copies:  # closed: every element of every copy is a copy
            assert all(tuple(d.flatten().tolist()) in seen for d in group.act(c, torch.arange(group.order)))
        assert group.output_permutations() is None
        assert ImageGroup.from_dict(group.to_dict()) == group
        assert isinstance(group, SymmetryGroup)
    dihedral = ImageGroup("rot90") * ImageGroup("hflip")
    assert isinstance(dihedral, SymmetryGroup) and dihedral.order == 8 and dihedral.elements[1] == (0, 1)
    assert type(dihedral).from_dict(dihedral.to_dict()) == dihedral
    for element in oracle_elements(["rot90", "hflip"]):
        assert torch.equal(dihedral.canonicalize(element(x)), dihedral.canonicalize(x))


def test_products_act_as_the_oracle_and_dihedral_is_closed():
    x = torch.randn(1, 1, 5, 5)
    for kinds in PRODUCTS:
        tables = pixel_tables(resolve_image_groups(kinds), 5, 5)
        copies = gather_pixels(x, tables)
        for k, element in enumerate(oracle_elements(kinds)):
            assert torch.equal(copies[k], element(x))
    dihedral = gather_pixels(x, pixel_tables(resolve_image_groups(["rot90", "hflip"]), 5, 5))
    seen = {tuple(c.flatten().tolist()) for c in dihedral}
    assert len(seen) == 8
    for a, b in itertools.product(oracle_elements(["rot90", "hflip"]), repeat=2):
        assert tuple(a(b(x)).flatten().tolist()) in seen


def test_commutation_and_refusals():
    assert not commute(resolve_image_groups(["rot90", "hflip"]))
    assert not commute(resolve_image_groups(["vflip", "rot90"]))
    assert commute(resolve_image_groups(["hflip", "vflip"]))
    assert commute(resolve_image_groups(["rot180", "hflip"]))
    with pytest.raises(ValueError, match=r"'rot90' rotates by 90 degrees and needs square images, got 6x5"):
        ImageGroup("rot90").act(torch.randn(2, 3, 6, 5), torch.arange(4))
    assert ImageGroup("hflip").act(torch.randn(2, 3, 6, 5), torch.arange(2)).shape == (2, 2, 3, 6, 5)
    with pytest.raises(ValueError, match="unknown image group kind 'rot45'"):
        ImageGroup("rot45")
    with pytest.raises(ValueError, match="rot90 x rot180 does not act faithfully"):
        resolve_image_groups(["rot90", "rot180"])
    with pytest.raises(ValueError, match="does not act faithfully"):
        resolve_image_groups(["hflip", "vflip", "rot180"])
    with pytest.raises(ValueError, match="names must be unique"):
        resolve_image_groups(["hflip", {"name": "hflip", "kind": "vflip"}])
    with pytest.raises(TypeError, match="expected an ImageGroup"):
        resolve_image_groups([3])


def test_canonicaliser_is_orbit_invariant_and_in_the_orbit():
    for kinds in PRODUCTS:
        factors = resolve_image_groups(kinds)
        tables = pixel_tables(factors, 5, 5)
        for x in images():
            x = x[None]
            c = canonicalize(x, tables)
            orbit = {tuple(e(x).flatten().tolist()) for e in oracle_elements(kinds)}
            assert tuple(c.flatten().tolist()) in orbit
            for element in oracle_elements(kinds):
                assert torch.equal(canonicalize(element(x), tables), c)
    group = ImageGroup("rot90")
    x = images()
    for element in oracle_elements(["rot90"]):
        assert torch.equal(group.canonicalize(element(x)), group.canonicalize(x))


def test_canonicaliser_of_the_other_factors_commutes_with_the_own_factor():
    """c_{-i}(g . x) = g . c_{-i}(x) for g in Gi, when the pattern is summed over Gi (module docstring, step 2)."""
    h, v = resolve_image_groups(["hflip", "vflip"])
    x = images()
    over, own = pixel_tables([v], 5, 5), pixel_tables([h], 5, 5)
    for element in oracle_elements(["hflip"]):
        assert torch.equal(canonicalize(element(x), over, invariant_to=own), element(canonicalize(x, over, own)))


class Probe(nn.Module):
    """A small convolutional classifier, not invariant to anything; counts the rows it computes."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(27, classes))
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.net(x)


def symmetrised(model, x, kinds, method, deduplicate=True, average="probs"):
    factors = resolve_image_groups(kinds)
    registered = get_symmetrization(method)
    plan = image_plan(method, [f.order for f in factors])
    copies = image_copies(x, factors, plan)
    rows, inverse = distinct_rows(copies) if deduplicate else (copies, torch.arange(copies.shape[0]))
    weights = registered.weights(None) if registered.weights else None
    return combine(model(rows), inverse, plan, average, weights)


@pytest.mark.parametrize("kinds", PRODUCTS, ids="x".join)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("deduplicate", [True, False])
def test_every_method_is_invariant_to_every_element(kinds, method, deduplicate):
    model, x = Probe(), images()
    y = symmetrised(model, x, kinds, method, deduplicate)
    for element in oracle_elements(kinds):
        torch.testing.assert_close(symmetrised(model, element(x), kinds, method, deduplicate), y, atol=1e-4, rtol=0)
    moved = oracle_elements(kinds)[1](x)
    assert (model(moved) - model(x)).abs().max() > 1e-2  # negative control: the model alone is not invariant


def test_copies_are_the_plan_elements_of_the_canonical_image():
    """rot90 x hflip, multi design: 4 rotations and 2 flips of c_G(x); equitune: the 8 elements of x."""
    x = images()[:1]
    factors = resolve_image_groups(["rot90", "hflip"])
    canonical = canonicalize(x, pixel_tables(factors, 5, 5))
    copies = image_copies(x, factors, per_factor_plan([4, 2])).unflatten(0, (6, 1))
    expected = [torch.rot90(canonical, k, dims=(-2, -1)) for k in range(4)] + [canonical, canonical.flip(-1)]
    assert len(copies) == 6 and all(torch.equal(c, e) for c, e in zip(copies, expected))
    copies = image_copies(x, factors, full_product_plan([4, 2])).unflatten(0, (8, 1))
    assert len(copies) == 8 and all(torch.equal(c, e(x)) for c, e in zip(copies, oracle_elements(["rot90", "hflip"])))


def test_inner_rows_counted_in_the_dihedral_setting():
    x = images()[:2]  # two generic images
    counts = {}
    for method in METHODS:
        for deduplicate in (False, True):
            model = Probe()
            symmetrised(model, x, ["rot90", "hflip"], method, deduplicate)
            counts[method, deduplicate] = model.rows // 2
    expected = {"equitune": (8, 8), "equizero": (8, 8), "multi_equitune": (6, 5), "multi_equizero": (6, 5),
                "canonicalize": (1, 1)}  # generic images; the multi design's canonical image is in both branches
    assert {m: (counts[m, False], counts[m, True]) for m in METHODS} == expected
    assert [get_symmetrization(m).inner_passes([4, 2]) for m in METHODS] == [8, 6, 8, 6, 1]
    model = Probe()
    symmetrised(model, images()[4:5], ["rot90", "hflip"], "equitune")  # constant image: one distinct copy
    assert model.rows == 1


class MostConfident(CopyWeights):
    """A method defined here: within each branch, the copies whose top log-probability is the highest."""

    def __init__(self, config=None):
        super().__init__()

    def forward(self, scores: CopyScores) -> torch.Tensor:
        top = scores.per_copy(scores.log_probs.amax(-1))  # [K, B]
        best = torch.stack([top[scores.branches == b].amax(0) for b in range(int(scores.branches.max()) + 1)])
        return (top == best[scores.branches]).double()


class CopyIndex(CopyWeights):
    """Negative control: weights by the copy's index, not by its outputs."""

    def __init__(self, config=None):
        super().__init__()

    def forward(self, scores: CopyScores) -> torch.Tensor:
        batch_size = scores.inverse.shape[0] // scores.num_copies
        return torch.arange(1.0, scores.num_copies + 1)[:, None].expand(-1, batch_size)


@pytest.fixture
def plugged_in():
    register_symmetrization(SymmetrizationMethod("test_most_confident", per_factor_plan, "-", "test", MostConfident))
    register_symmetrization(SymmetrizationMethod("test_copy_index", full_product_plan, "-", "control", CopyIndex))
    yield
    del SYMMETRIZATIONS["test_most_confident"], SYMMETRIZATIONS["test_copy_index"]


def test_a_method_defined_here_plugs_into_images(plugged_in):
    model, x = Probe(), images()
    kinds = ["rot90", "hflip"]
    y = symmetrised(model, x, kinds, "test_most_confident", average="logits")
    for element in oracle_elements(kinds):
        torch.testing.assert_close(symmetrised(model, element(x), kinds, "test_most_confident", average="logits"), y,
                                   atol=1e-4, rtol=0)
    # its formula: per branch, the mean logits of the most confident copies; then the mean over branches
    factors = resolve_image_groups(kinds)
    copies = image_copies(x, factors, per_factor_plan([4, 2])).unflatten(0, (6, -1))
    z = torch.stack([model(c) for c in copies])  # [6, B, L]
    branch_means = []
    for branch in (z[:4], z[4:]):
        top = branch.log_softmax(-1).amax(-1)
        chosen = (top == top.amax(0)).float()
        branch_means.append((branch * chosen[..., None]).sum(0) / chosen.sum(0)[:, None])
    torch.testing.assert_close(y, sum(branch_means) / 2, atol=1e-5, rtol=0)
    moved = oracle_elements(kinds)[1](x)
    control = symmetrised(model, x, kinds, "test_copy_index", average="logits")
    assert (symmetrised(model, moved, kinds, "test_copy_index", average="logits") - control).abs().max() > 1e-3


def test_combine_refuses_an_unknown_average():
    plan = full_product_plan([2])
    with pytest.raises(ValueError, match="unknown average 'mean'"):
        combine(torch.zeros(2, 3), torch.arange(2), plan, "mean")
    with pytest.raises(ValueError, match=r"unknown link 'tanh', choose one of \('softmax', 'sigmoid'\)"):
        combine(torch.zeros(2, 3), torch.arange(2), plan, "probs", link="tanh")


def test_word_swap_groups_follow_the_same_protocol(tokenizer):
    race = WordSwapGroup("race", RACE_CLASSES).resolve(tokenizer)
    assert isinstance(race, SymmetryGroup)
    black, white, asian, the = (tokenizer.convert_tokens_to_ids(w) for w in ("Black", "White", "Asian", "the"))
    ids = torch.tensor([[the, black, white]])
    copies = race.act(ids, torch.arange(3))
    assert copies[:, 0].tolist() == [[the, black, white], [the, white, asian], [the, asian, black]]
    assert all(torch.equal(race.canonicalize(c), race.canonicalize(ids)) for c in copies)
    y = torch.randn(len(tokenizer))
    reads = race.output_permutations()
    assert (y[reads[1]])[black] == y[white]  # (g^-1 . y)[Black] = y[g(Black)] = y[White]
