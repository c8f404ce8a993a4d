"""Groups of quarter turns and mirror images acting on images, their products, and their canonicalisers.

Kinds (one factor each): `rot90` (C4, the rotations by k*90 degrees; square images only), `rot180` (C2),
`hflip` (mirror left-right) and `vflip` (mirror top-bottom). They act on the last two axes (H, W) of
`pixel_values` [B, C, H, W] by index operations only: element g is a permutation of the H*W pixel
positions, the *pixel table* t_g with (g.x).flatten()[q] = x.flatten()[t_g[q]]. Every copy of every image
comes out of one gather, and a composite element a.b has the table t_b[t_a].

A product G1 x ... x GN has the elements (g1, ..., gN), acting as g1 o g2 o ... o gN. The factors must act
faithfully together (no two elements give the same pixel table: rot180 with rot90, or hflip x vflip x rot180,
are refused). Some products commute (hflip x vflip, rot180 x hflip); rot90 with a flip does not: it is the
dihedral group D4 of order 8, and its 8 products r^k f^j are exactly D4, so equitune over them is exact.

Canonicaliser (orbit-invariant). For a fixed pattern P (a standard normal tensor of the image's shape,
seeded, the same for every call) and a set S of elements,
    c_S(x) = s* . x,   s* = argmax_{s in S} <s . x, P>.
If S is a group, the images {s . x : s in S} are the same set for x and for h . x (h in S), so the
maximising image is the same: c_S(h . x) = c_S(x), and c_S(x) lies in the orbit of x. Elements whose images
are equal (x fixed by some element) tie, harmlessly: they give the same image. Two *different* images a != b
tie only if <a - b, P> = 0, an event of probability zero over P (scores are summed in float64).

Invariant outputs (class logits, CLIP image-text scores): the output action is trivial, g^-1 . y = y.
- equitune: y(x) = 1/|G| sum_{g in G} M(g . x). As G . h = G, y(h . x) = y(x). |G| inner passes.
- equizero: y(x) = mean of M(g . x) over the g that minimise a proxy loss L(M(g . x)) (entropy or -max
  probability); the multiset {M(g . h . x)} equals {M(g . x)}, so the minimisers' outputs, and their mean,
  are the same. Ties are averaged over the whole argmin set: equal images give equal outputs and tie.
- multi design, commuting factors (as with word swaps): for factor i, canonicalise the others with a
  pattern made invariant under Gi, P_i = sum_{g in Gi} g . P, and average over Gi:
      T_i(x) = 1/|Gi| sum_{g in Gi} M(g . c_{-i}(x)),   c_{-i} = c_{G_{-i}} with pattern P_i,
      y(x) = 1/N sum_i T_i(x)                               (sum |Gi| inner passes).
  Proof. Every element is g.h with g in Gi, h in G_{-i}. (1) c_{-i}(h . x) = c_{-i}(x) (orbit invariance
  over the group G_{-i}). (2) For g in Gi, <h . g . x, P_i> = <g . h . x, P_i> = <h . x, g^-1 . P_i>
  = <h . x, P_i> (the factors commute, pixel permutations are orthogonal, P_i is Gi-invariant), so the
  same h* wins for g . x and c_{-i}(g . x) = h* . g . x = g . c_{-i}(x); T_i averages M over the Gi-orbit of
  c_{-i}(x), which g . c_{-i}(x) does not change. A tie between h . x and h' . x = g0 . h . x (g0 in Gi)
  only moves c_{-i}(x) inside that Gi-orbit: harmless too. Hence T_i(g . h . x) = T_i(x), and y is invariant.
- multi design, non-commuting factors (the paper's rotation x flip, as its code does it): canonicalise over
  the whole group first, x_c = c_G(x), then average over each factor's copies of x_c:
      y(x) = 1/N sum_i 1/|Gi| sum_{g in Gi} M(g . x_c).
  y depends on x through x_c = c_G(x) only, and c_G(h . x) = c_G(x) for every h in G: y is invariant.
  rot90 x hflip: 4 + 2 = 6 copies instead of 8 (the identity copy of x_c is in both branches, so 5
  distinct images with deduplication). The averaging does not make y invariant (the canonicaliser does);
  it pools the model's views of the canonical image, which is what makes it better than canonicalisation.
- multi_equizero: equizero within each branch's copies, then the mean over branches. T_i stays invariant
  by the same arguments (it depends on the Gi-orbit of c_{-i}(x), resp. on x_c, only).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch

KINDS = {"rot90": 4, "rot180": 2, "hflip": 2, "vflip": 2}
PATTERN_SEED = 0  # the canonicaliser's pattern P; changing it changes which image is canonical


def apply_kind(kind: str, k: int, x: torch.Tensor) -> torch.Tensor:
    """Element k of a factor of `kind` applied to the last two axes of x."""
    if kind == "rot90":
        return torch.rot90(x, k, dims=(-2, -1))
    if kind == "rot180":
        return torch.rot90(x, 2 * k, dims=(-2, -1))
    if kind == "hflip":
        return x.flip(-1) if k else x
    return x.flip(-2) if k else x  # vflip


def gather_pixels(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """[..., H, W] images and [K, H*W] pixel tables -> [K, ..., H, W]: copy k is t_k applied to x."""
    height, width = x.shape[-2:]
    return x.flatten(-2)[..., tables].movedim(-2, 0).unflatten(-1, (height, width))


@functools.lru_cache(maxsize=64)
def _tables(kinds: tuple[str, ...], height: int, width: int) -> torch.Tensor:
    grid = torch.arange(height * width).view(height, width)
    rows = []
    for element in itertools.product(*(range(KINDS[kind]) for kind in kinds)):
        image = grid
        for kind, k in reversed(list(zip(kinds, element))):  # g1 o ... o gN: gN acts first
            image = apply_kind(kind, k, image)
        rows.append(image.flatten())
    return torch.stack(rows)


def pixel_tables(factors, height: int, width: int, device=None) -> torch.Tensor:
    """[prod |Gi|, H*W] long: the pixel tables of the product's elements, in itertools.product order."""
    square = [f.name for f in factors if f.kind == "rot90"]
    if square and height != width:
        raise ValueError(
            f"group {square[0]!r} rotates by 90 degrees and needs square images, got {height}x{width} pixels; "
            f"resize or crop the images to a square (the image processor's size), or use rot180 instead"
        )
    return _tables(tuple(f.kind for f in factors), height, width).to(device)


@functools.lru_cache(maxsize=16)
def _pattern(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(PATTERN_SEED), dtype=torch.float64)


def canonicalize(x: torch.Tensor, over: torch.Tensor, invariant_to: torch.Tensor | None = None) -> torch.Tensor:
    """c_S(x) = s* . x with s* = argmax_{s in S} <s . x, P> (module docstring), per image of x [B, ..., H, W].

    `over` ([|S|, H*W]) are the pixel tables of the group S; `invariant_to` those of a group whose
    action on P is summed out first (P_i = sum_g g . P), so that c_S commutes with that group.
    """
    pattern = _pattern(tuple(x.shape[1:])).to(x.device)
    if invariant_to is not None:
        pattern = gather_pixels(pattern, invariant_to).sum(0)
    # <s . x, P> = <x, s^-1 . P>: score the images against the |S| moved patterns, without moving the images
    patterns = gather_pixels(pattern, over.argsort(-1))  # [|S|, ...]: s^-1 . P (the table of s^-1 is t_s^-1)
    best = (x.flatten(1).double() @ patterns.flatten(1).t()).argmax(1)  # [B]
    flat = x.flatten(-2)  # [B, ..., H*W]
    index = over[best].view(x.shape[0], *[1] * (flat.dim() - 2), -1).expand_as(flat)
    return flat.gather(-1, index).view_as(x)


class PixelAction:
    """The action of a group of pixel permutations (`ImageGroup`, `ImageGroupProduct`), from its `pixel_tables`.

    Implements `symmetry.SymmetryGroup` with the subclass's `name`, `elements`, `order`, `to_dict`, `from_dict`.
    """

    def pixel_tables(self, height: int, width: int, device=None) -> torch.Tensor:
        """[|G|, H*W] long: the pixel table of each element, in the order of `elements`."""
        return pixel_tables(self.factors, height, width, device)

    def act(self, x: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
        """[K, *x.shape]: the elements `index` ([K] long) applied to the images x [..., H, W]; for an int index,
        that one element applied, x.shape."""
        if isinstance(index, int):
            return self.act(x, torch.tensor([index], device=x.device))[0]
        return gather_pixels(x, self.pixel_tables(*x.shape[-2:], device=x.device)[index])

    def inverse_act(self, ys: torch.Tensor) -> torch.Tensor:
        """[|G|, ..., H, W] -> the same with ys[k] replaced by g_k^-1 . ys[k] (one gather)."""
        inverse = self.pixel_tables(*ys.shape[-2:], device=ys.device).argsort(-1)  # t_{g^-1} = t_g^-1
        flat = ys.flatten(-2)
        index = inverse.view(inverse.shape[0], *[1] * (flat.dim() - 2), -1).expand_as(flat)
        return flat.gather(-1, index).view_as(ys)

    def output_permutations(self) -> None:
        """None: class scores of an image do not move when the image does."""
        return None

    def canonicalize(self, x: torch.Tensor) -> torch.Tensor:
        """c_G(x) (module docstring): the same image for every g . x, in the orbit of x."""
        return canonicalize(x, self.pixel_tables(*x.shape[-2:], device=x.device))

    def __mul__(self, other: PixelAction) -> ImageGroupProduct:
        """The product of two groups: elements (a, b) acting as a o b."""
        return ImageGroupProduct((*self.factors, *other.factors))


@dataclass(frozen=True)
class ImageGroup(PixelAction):
    """A factor acting on images: `ImageGroup("rot90")`, `ImageGroup("hflip")`, ... (see `KINDS`)."""

    kind: str
    name: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown image group kind {self.kind!r}, choose one of {sorted(KINDS)}")
        if not isinstance(self.name, str):
            raise ValueError(f"an image group's name must be a string, got {self.name!r}")
        object.__setattr__(self, "name", self.name or self.kind)

    @property
    def factors(self) -> tuple[ImageGroup]:
        return (self,)

    @property
    def order(self) -> int:
        return KINDS[self.kind]

    @property
    def elements(self) -> list[int]:
        """k = 0..|G|-1: rotation by k quarter turns (rot90), by k half turns (rot180), mirrored or not (flips)."""
        return list(range(self.order))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict) -> ImageGroup:
        return cls(**data)


@dataclass(frozen=True)
class ImageGroupProduct(PixelAction):
    """The product G1 x ... x GN of image groups as one group: elements (g1, ..., gN) acting as g1 o ... o gN.

    The factors need not commute (rot90 x hflip is the dihedral group), but must act faithfully.
    """

    factors: tuple[ImageGroup, ...]

    def __post_init__(self):
        object.__setattr__(self, "factors", tuple(resolve_image_groups(self.factors)))

    @property
    def name(self) -> str:
        return "x".join(f.name for f in self.factors)

    @property
    def order(self) -> int:
        return len(self.elements)

    @property
    def elements(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(f.elements for f in self.factors)))

    def to_dict(self) -> dict:
        return {"factors": [f.to_dict() for f in self.factors]}

    @classmethod
    def from_dict(cls, data: dict) -> ImageGroupProduct:
        return cls(tuple(data["factors"]))


def commute(factors) -> bool:
    """Whether every element of each factor commutes with every element of the others."""
    for a, b in itertools.combinations(factors, 2):
        both, swapped = _tables((a.kind, b.kind), 3, 3), _tables((b.kind, a.kind), 3, 3)
        if not torch.equal(both, swapped.view(b.order, a.order, -1).transpose(0, 1).flatten(0, 1)):
            return False
    return True


def resolve_image_groups(groups) -> list[ImageGroup]:
    """The factors of a product from ImageGroup, their dicts or kind names; refuses products that do not act
    faithfully (two elements with the same action, like rot90 x rot180)."""
    groups = list(groups)
    if not groups:
        raise ValueError("give at least one image group, e.g. groups=['rot90', 'hflip']")
    factors = []
    for group in groups:
        if isinstance(group, str):
            group = ImageGroup(group)
        elif isinstance(group, dict):
            group = ImageGroup.from_dict(group)
        elif not isinstance(group, ImageGroup):
            raise TypeError(f"expected an ImageGroup, its dict or a kind name {sorted(KINDS)}, got {group!r}")
        factors.append(group)
    names = [f.name for f in factors]
    if len(set(names)) != len(names):
        raise ValueError(f"image group names must be unique, got {names}")
    tables = _tables(tuple(f.kind for f in factors), 3, 3)
    if torch.unique(tables, dim=0).shape[0] != tables.shape[0]:
        raise ValueError(
            f"the product {' x '.join(names)} does not act faithfully: two of its elements transform every image "
            f"the same way (e.g. rot180 is a rot90 element, and hflip o vflip = rot180); drop the redundant factor"
        )
    return factors
