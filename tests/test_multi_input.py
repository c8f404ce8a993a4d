"""Multi-input equivariant networks: groups on tensors, exactness for every element combination, IS layers."""

import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hf_equivariant import ImageGroup
from hf_equivariant.experiments.multi_input import (
    ISLayer,
    MultiInputEquivariantNet,
    MultiInputLayer,
    equitune,
    symmetrize,
)

C4, C2, FLIP, VFLIP = ImageGroup("rot90"), ImageGroup("rot180"), ImageGroup("hflip"), ImageGroup("vflip")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def conv(in_channels, out_channels, size=3):
    return nn.Conv2d(in_channels, out_channels, size, padding=size // 2)


def test_groups_act_as_groups():
    x = torch.randn(2, 3, 6, 6)
    for group in (C4, C2, FLIP, C2 * FLIP, C4 * FLIP):
        everything = torch.arange(group.order)
        copies = group.act(x, everything)
        assert torch.equal(group.act(x, 0), x) and torch.equal(copies[1], group.act(x, 1))
        assert torch.equal(group.inverse_act(copies), x.expand_as(copies))  # g_k^-1 g_k x = x
        assert len({tuple(c.flatten().tolist()) for c in copies}) == group.order
        torch.testing.assert_close(symmetrize(group, symmetrize(group, x)), symmetrize(group, x))
    assert torch.equal(C4.act(x, 1), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(FLIP.act(x, 1)[..., 0], x[..., -1])  # mirrors left-right
    assert (C4 * FLIP).name == "rot90xhflip" and (C4 * FLIP).order == 8


def test_bad_groups_and_inputs_are_refused():
    with pytest.raises(ValueError, match="rot90 x rot180 does not act faithfully"):
        C4 * C2
    with pytest.raises(ValueError, match=r"'rot90' rotates by 90 degrees and needs square images, got 6x5"):
        C4.act(torch.randn(2, 1, 6, 5), 1)
    layer = MultiInputLayer([C4, FLIP], lambda: conv(1, 2))
    with pytest.raises(ValueError, match="expected 2 inputs \\(one per group\\), got 3"):
        layer([torch.randn(1, 1, 6, 6)] * 3)


def test_equitune_is_equivariant_and_invariant():
    torch.manual_seed(0)
    group, x = C4 * FLIP, torch.randn(3, 1, 6, 6)
    equivariant, invariant = equitune(conv(1, 4), group), equitune(nn.Sequential(conv(1, 2), nn.Flatten()), group,
                                                                   invariant=True)
    for k in range(group.order):
        torch.testing.assert_close(equivariant(group.act(x, k)), group.act(equivariant(x), k), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(invariant(group.act(x, k)), invariant(x), atol=1e-5, rtol=1e-5)


def test_is_layer_is_invariant_in_its_input_and_symmetric_in_its_output():
    torch.manual_seed(0)
    source, target = C4, FLIP
    layer, x = ISLayer(conv(1, 3), source, target), torch.randn(2, 1, 6, 6)
    y = layer(x)
    for h in range(source.order):
        torch.testing.assert_close(layer(source.act(x, h)), y, atol=1e-5, rtol=1e-5)
    for g in range(target.order):
        torch.testing.assert_close(target.act(y, g), y, atol=1e-5, rtol=1e-5)
    stream = equitune(conv(1, 3), source)  # negative control: an equivariant stream does change
    assert not torch.allclose(stream(source.act(x, 1)), stream(x), atol=1e-3)


@pytest.mark.parametrize("groups", [
    [C4, FLIP],
    [C4, C2 * FLIP, FLIP],
    [C4 * FLIP, VFLIP],  # a dihedral stream: its factors do not commute, and it is a group
], ids=["N=2", "N=3", "dihedral"])
@pytest.mark.parametrize("fusion", [False, True])
def test_every_element_combination(groups, fusion):
    torch.manual_seed(0)
    fuse = (lambda: conv(1, 4, 1)) if fusion else None
    layer = MultiInputLayer(groups, lambda: conv(1, 4), fuse)
    net = MultiInputEquivariantNet(groups, [layer, MultiInputLayer(groups, lambda: conv(4, 4),
                                                                   (lambda: conv(4, 4, 1)) if fusion else None)],
                                   nn.Linear(4 * len(groups), 3))
    inputs = [torch.randn(2, 1, 6, 6) for _ in groups]
    features, output = layer(inputs), net(inputs)
    for elements in itertools.product(*(range(g.order) for g in groups)):
        moved = [g.act(x, k) for g, x, k in zip(groups, inputs, elements)]
        torch.testing.assert_close(net(moved), output, atol=1e-5, rtol=1e-5)  # invariant output
        for g, k, y, y_moved in zip(groups, elements, features, layer(moved)):  # equivariant streams
            torch.testing.assert_close(y_moved, g.act(y, k), atol=1e-5, rtol=1e-5)
    plain = nn.Sequential(conv(1, 3), nn.Flatten())
    assert not torch.allclose(plain(inputs[0]), plain(groups[0].act(inputs[0], 1)), atol=1e-3)  # negative control


def test_experiment_smoke_run(tmp_path):
    import multi_view_digits

    out = tmp_path / "multi_view.md"
    multi_view_digits.main(["--views", "2", "--seeds", "0", "--epochs", "1", "--train-samples", "64",
                            "--test-samples", "32", "--out", str(out)])
    text = out.read_text()
    for name in ("plain", "augmented", "multi-input", "multi-input+IS"):
        assert f"| 2 | {name} |" in text
    assert "| 2 | multi-input | " in text and "| 8 | 0 | 16 |" in text  # 4 rotations x 2 views, vs 4^2
