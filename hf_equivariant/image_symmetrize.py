"""Symmetrisation of a model with invariant outputs over a product of image groups, as tensor functions.

A plan is a list of *branches* (module docstring of `image_groups` for the math and the proofs):
- equitune, equizero: one branch, the copies g . x for every element g of the product (prod |Gi| copies);
- multi_equitune, multi_equizero with N >= 2 factors: branch i holds the copies g . c_i(x), g in Gi, of a
  canonical image c_i(x) (the other factors canonicalised if the factors commute, the whole group if not);
  sum |Gi| copies.
The copies of every input go through the inner model as one batch; equal copies (an image fixed by some
element, or the canonical image that several branches share) run once when deduplicated. The copies'
scores z_k ([K, B, L]: class logits, image-text logits) combine as
    y = 1/N_branches sum_branches mean_{k in selected(branch)} a(z_k),
with a = identity ("logits"), log_softmax ("log_probs") or softmax ("probs", whose mean is returned as a log
so that softmax(y) is the averaged distribution). `selected` is every copy of the branch for the equitune
forms; for the equizero forms it is the argmin set of the proxy loss L(softmax(z_k)) within the branch
(entropy or -max probability), ties averaged over the whole set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .image_groups import canonicalize, commute, gather_pixels, pixel_tables

METHODS = ("equitune", "multi_equitune", "equizero", "multi_equizero")
SELECTING = ("equizero", "multi_equizero")
AVERAGES = ("logits", "log_probs", "probs")
LOSSES = ("entropy", "max_prob")


def check_method(method: str, average: str = "probs", loss: str = "entropy") -> None:
    if method not in METHODS:
        raise ValueError(f"unknown symmetrization {method!r} for image groups, choose one of {METHODS}")
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}, choose one of {AVERAGES}")
    if loss not in LOSSES:
        raise ValueError(f"unknown equizero loss {loss!r}, choose one of {LOSSES}")


def count_copies(orders: list[int], method: str) -> int:
    """Copies per input: prod |Gi| for equitune and equizero, sum |Gi| for the multi forms (N >= 2)."""
    return math.prod(orders) if not method.startswith("multi_") or len(orders) <= 1 else sum(orders)


@dataclass(frozen=True)
class Branch:
    """The copies `copies` ([K_i, H*W] pixel tables) of the image canonicalised over the elements `over`
    (pixel tables, None: the image itself) with a pattern made invariant to `invariant_to`."""

    copies: torch.Tensor
    over: torch.Tensor | None = None
    invariant_to: torch.Tensor | None = None


def plan_branches(factors, method: str, height: int, width: int, device=None) -> list[Branch]:
    """The branches of `method` over the product of `factors` for images of height x width."""
    check_method(method)
    if not method.startswith("multi_") or len(factors) == 1:
        return [Branch(pixel_tables(factors, height, width, device))]
    own = [pixel_tables([f], height, width, device) for f in factors]
    if commute(factors):
        return [Branch(own[i], pixel_tables(factors[:i] + factors[i + 1:], height, width, device), own[i])
                for i in range(len(factors))]
    whole = pixel_tables(factors, height, width, device)
    return [Branch(tables, whole) for tables in own]


def make_copies(pixel_values: torch.Tensor, branches: list[Branch]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, ...] images -> ([K*B, ...] copies, copy-major; [K] long: the branch of each copy)."""
    canonical, parts = {}, []
    for branch in branches:
        key = (id(branch.over), id(branch.invariant_to))
        if key not in canonical:  # the non-commuting design canonicalises over the whole group once for all
            canonical[key] = (pixel_values if branch.over is None
                              else canonicalize(pixel_values, branch.over, branch.invariant_to))
        parts.append(gather_pixels(canonical[key], branch.copies))
    owner = torch.cat([torch.full((len(b.copies),), i, device=pixel_values.device) for i, b in enumerate(branches)])
    return torch.cat(parts).flatten(0, 1), owner


def distinct_rows(copies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct rows of copies [R, ...], [R] long: which distinct row each copy is)."""
    distinct, inverse = torch.unique(copies.flatten(1), dim=0, return_inverse=True)
    return distinct.view(-1, *copies.shape[1:]), inverse


def proxy_loss(scores: torch.Tensor, loss: str) -> torch.Tensor:
    """Equizero's proxy loss of each copy's scores [..., L]: entropy or -max of softmax."""
    probs = scores.double().softmax(-1)
    if loss == "entropy":
        return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)
    return -probs.amax(-1)


def combine(scores: torch.Tensor, branch: torch.Tensor, method: str, average: str = "probs",
            loss: str = "entropy") -> torch.Tensor:
    """[K, B, L] scores of the copies, [K] branch of each copy -> [B, L] invariant scores (module docstring)."""
    check_method(method, average, loss)
    if average == "log_probs":
        values = scores.float().log_softmax(-1)
    elif average == "probs":
        values = scores.double().softmax(-1)  # float64: tiny probabilities survive the mean and the log
    else:
        values = scores.float()
    members = (branch[None, :] == torch.arange(int(branch.max()) + 1, device=branch.device)[:, None])  # [N, K]
    if method in SELECTING:
        losses = proxy_loss(scores, loss)  # [K, B]
        lowest = torch.where(members[:, :, None], losses[None], float("inf")).amin(1)  # [N, B]
        selected = losses == lowest[branch]  # [K, B]: the argmin set of each branch, ties included
    else:
        selected = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    kept = torch.where(selected[..., None], values, 0)
    sums = torch.einsum("nk,kbl->nbl", members.to(values.dtype), kept)
    counts = torch.einsum("nk,kb->nb", members.to(values.dtype), selected.to(values.dtype))
    y = (sums / counts[..., None]).mean(0)
    return y.log().float() if average == "probs" else y
