"""The paper's first design: networks of several inputs X1..XN, group Gi acting on input i only.

- The groups are image groups (`image_groups.ImageGroup`: quarter turns, half turns, mirror images, and their
  products `ImageGroup("rot180") * ImageGroup("hflip")`), acting on the last two axes of feature maps.
- `equitune(module, group)`: y = 1/|G| sum_g g^-1 M(g x) (equivariant) or 1/|G| sum_g M(g x) (invariant).
- `ISLayer(module, source, target)`: IS(x) = Sym_target( 1/|Gs| sum_h F(h x) ), Sym_G(y) = 1/|G| sum_g g y:
  invariant to the source group in its input and fixed by the target group in its output.
- `MultiInputEquivariantNet`: per layer Y_i = equitune_Gi(M_i)(X_i) + sum_{j != i} IS_ji(X_j), then an
  invariant head. Inner passes: sum |Gi| per layer instead of prod |Gi| for equitune over the joint input.
Every group element of a stream runs through its module as one batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..image_groups import PixelAction


def orbit(group: PixelAction, x: torch.Tensor) -> torch.Tensor:
    """[|G|, *x.shape]: every element applied to x."""
    return group.act(x, torch.arange(group.order, device=x.device))


def symmetrize(group: PixelAction, y: torch.Tensor) -> torch.Tensor:
    """Sym_G(y) = 1/|G| sum_g g y."""
    return orbit(group, y).mean(0)


class Equituned(nn.Module):
    """equitune(M): the mean over the group of g^-1 M(g x) (or of M(g x) with invariant=True)."""

    def __init__(self, module: nn.Module, group: PixelAction, invariant: bool = False):
        super().__init__()
        self.module, self.group, self.invariant = module, group, invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies = orbit(self.group, x)  # [|G|, B, ...]
        ys = self.module(copies.flatten(0, 1)).unflatten(0, copies.shape[:2])
        return ys.mean(0) if self.invariant else self.group.inverse_act(ys).mean(0)


def equitune(module: nn.Module, group: PixelAction, invariant: bool = False) -> Equituned:
    """The per-input wrapper: equivariant (or invariant) to `group` for any `module`."""
    return Equituned(module, group, invariant)


class ISLayer(nn.Module):
    """Invariant-symmetric map from a source stream (group `source`) to a target stream (group `target`).

    With `target=None` the output is a feature vector, on which the target group acts trivially.
    """

    def __init__(self, module: nn.Module, source: PixelAction, target: PixelAction | None):
        super().__init__()
        self.invariant_part = equitune(module, source, invariant=True)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.invariant_part(x)
        return y if self.target is None else symmetrize(self.target, y)


class MultiInputLayer(nn.Module):
    """Y_i = equitune_Gi(M_i)(X_i) + sum_{j != i} IS_ji(X_j) (without fusion: just the first term).

    `make_stream()` builds each M_i, `make_fusion()` each F_ji; both map a stream's input to a stream's
    output. With `invariant=True` the outputs are invariant feature vectors (the last layer of a network),
    otherwise feature maps that the stream's group acts on.
    """

    def __init__(self, groups: Sequence[PixelAction], make_stream: Callable[[], nn.Module],
                 make_fusion: Callable[[], nn.Module] | None = None, invariant: bool = False):
        super().__init__()
        self.groups = list(groups)
        self.streams = nn.ModuleList(equitune(make_stream(), g, invariant) for g in self.groups)
        self.fusion = nn.ModuleDict({
            f"{j}->{i}": ISLayer(make_fusion(), self.groups[j], None if invariant else self.groups[i])
            for i, j in itertools.permutations(range(len(self.groups)), 2)
        } if make_fusion is not None else {})

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} inputs (one per group), got {len(inputs)}")
        outputs = [stream(x) for stream, x in zip(self.streams, inputs)]
        for key, layer in self.fusion.items():
            j, i = map(int, key.split("->"))
            outputs[i] = outputs[i] + layer(inputs[j])
        return outputs


class MultiInputEquivariantNet(nn.Module):
    """Stacked multi-input layers, then a head on invariant features: the output is invariant to every
    input's group.

    Feature maps are averaged over space (invariant, as the streams are equivariant to rotations and
    flips of the spatial axes); feature vectors of an invariant last layer are used as they are. The
    streams are concatenated and `head` applied.
    """

    def __init__(self, groups: Sequence[PixelAction], layers: Sequence[MultiInputLayer], head: nn.Module):
        super().__init__()
        self.groups = list(groups)
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} inputs (one per group), got {len(inputs)}")
        streams = list(inputs)
        for layer in self.layers:
            streams = [torch.relu(s) for s in layer(streams)]
        return self.head(torch.cat([s.mean(dim=(-2, -1)) if s.dim() > 2 else s for s in streams], dim=-1))
