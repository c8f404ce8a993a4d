"""The paper's first design: networks of several inputs X1..XN, group Gi acting on input i only.

- `TensorGroup`: a finite group acting on the last two axes of a tensor (90-degree rotations,
  horizontal flip, the identity, and products of commuting ones).
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


class TensorGroup:
    """A finite group acting on the last two axes (H, W) of tensors.

    `act(x, k)` applies element k, `inverse[k]` is the index of its inverse; element 0 is the identity.
    """

    def __init__(self, name: str, order: int, act: Callable[[torch.Tensor, int], torch.Tensor],
                 inverse: Sequence[int], square: bool = False):
        self.name, self.order, self._act, self.inverse, self.square = name, order, act, list(inverse), square

    def act(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if x.dim() < 2 or (self.square and x.shape[-1] != x.shape[-2]):
            raise ValueError(f"group {self.name!r} acts on square [..., H, W] tensors, got shape {tuple(x.shape)}")
        return self._act(x, k)

    def orbit(self, x: torch.Tensor) -> torch.Tensor:
        """[|G|, *x.shape]: every element applied to x."""
        return torch.stack([self.act(x, k) for k in range(self.order)])

    def inverse_orbit(self, ys: torch.Tensor) -> torch.Tensor:
        """ys[k] -> g_k^-1 ys[k], for ys of shape [|G|, ...]."""
        return torch.stack([self.act(y, self.inverse[k]) for k, y in enumerate(ys)])

    def symmetrize(self, y: torch.Tensor) -> torch.Tensor:
        """Sym_G(y) = 1/|G| sum_g g y."""
        return self.orbit(y).mean(0)

    def __mul__(self, other: TensorGroup) -> TensorGroup:
        """The direct product of two commuting groups (elements (a, b) = a after b)."""
        probe = torch.randn(5, 5) if not (self.square or other.square) else torch.randn(6, 6)
        for a, b in itertools.product(range(self.order), range(other.order)):
            if not torch.equal(self.act(other.act(probe, b), a), other.act(self.act(probe, a), b)):
                raise ValueError(f"groups {self.name!r} and {other.name!r} do not commute, so their direct "
                                 f"product does not act this way (element {a} of one and {b} of the other)")
        pairs = list(itertools.product(range(self.order), range(other.order)))
        return TensorGroup(
            f"{self.name}x{other.name}", len(pairs), lambda x, k: self.act(other.act(x, pairs[k][1]), pairs[k][0]),
            [pairs.index((self.inverse[a], other.inverse[b])) for a, b in pairs], self.square or other.square,
        )

    def __repr__(self) -> str:
        return f"TensorGroup({self.name!r}, order={self.order})"


def identity_group() -> TensorGroup:
    return TensorGroup("identity", 1, lambda x, k: x, [0])


def rotations(quarter_turns: int = 4) -> TensorGroup:
    """C4 (or C2 with quarter_turns=2: 0 and 180 degrees) rotations of the last two axes."""
    if quarter_turns not in (2, 4):
        raise ValueError(f"rotations by 90 degrees form C4 or, by 180 degrees, C2; got {quarter_turns}")
    step = 4 // quarter_turns
    return TensorGroup(f"C{quarter_turns}", quarter_turns, lambda x, k: torch.rot90(x, k * step, dims=(-2, -1)),
                       [(-k) % quarter_turns for k in range(quarter_turns)], square=quarter_turns == 4)


def horizontal_flip() -> TensorGroup:
    """Mirror left-right (the last axis)."""
    return TensorGroup("flip", 2, lambda x, k: x.flip(-1) if k else x, [0, 1])


class Equituned(nn.Module):
    """equitune(M): the mean over the group of g^-1 M(g x) (or of M(g x) with invariant=True)."""

    def __init__(self, module: nn.Module, group: TensorGroup, invariant: bool = False):
        super().__init__()
        self.module, self.group, self.invariant = module, group, invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orbit = self.group.orbit(x)  # [|G|, B, ...]
        ys = self.module(orbit.flatten(0, 1)).unflatten(0, orbit.shape[:2])
        return ys.mean(0) if self.invariant else self.group.inverse_orbit(ys).mean(0)


def equitune(module: nn.Module, group: TensorGroup, invariant: bool = False) -> Equituned:
    """The per-input wrapper: equivariant (or invariant) to `group` for any `module`."""
    return Equituned(module, group, invariant)


class ISLayer(nn.Module):
    """Invariant-symmetric map from a source stream (group `source`) to a target stream (group `target`).

    With `target=None` the output is a feature vector, on which the target group acts trivially.
    """

    def __init__(self, module: nn.Module, source: TensorGroup, target: TensorGroup | None):
        super().__init__()
        self.invariant_part = equitune(module, source, invariant=True)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.invariant_part(x)
        return y if self.target is None else self.target.symmetrize(y)


class MultiInputLayer(nn.Module):
    """Y_i = equitune_Gi(M_i)(X_i) + sum_{j != i} IS_ji(X_j) (without fusion: just the first term).

    `make_stream()` builds each M_i, `make_fusion()` each F_ji; both map a stream's input to a stream's
    output. With `invariant=True` the outputs are invariant feature vectors (the last layer of a network),
    otherwise feature maps that the stream's group acts on.
    """

    def __init__(self, groups: Sequence[TensorGroup], make_stream: Callable[[], nn.Module],
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

    def __init__(self, groups: Sequence[TensorGroup], layers: Sequence[MultiInputLayer], head: nn.Module):
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
