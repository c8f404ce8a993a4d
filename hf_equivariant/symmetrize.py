"""Symmetrisation of a model over a product of word-swap groups, as pure tensor functions.

A *plan* lists the K copies of an input that go through the inner model M, and how their outputs
z_k (log-probabilities, logits or probabilities over the vocabulary) combine into one output:

  equitune        K = prod |Gi|:  y = 1/|G| sum_g  g^-1 . M(g . x)
  multi_equitune  K = sum |Gi|:   y = 1/N sum_i Sym_{-i}( 1/|Gi| sum_{g in Gi} g^-1 . M(g . c_{-i}(x)) )

where c_{-i} canonicalises every factor but i and Sym_{-i}(y) = mean over h in G_{-i} of h . y.
Acting on an output permutes the vocabulary axis: (g^-1 . y)[v] = y[g(v)]. Every term of the
combination therefore reads copy k at column r(v) for some permutation r that moves only the
*support* (the tokens some factor touches). Off the support a column is a plain weighted sum of
the copies; on the support it is a small [u x u] mixing per copy. So
  y[..., v]       = sum_k weights[k] * z_k[..., v]                        (v off the support)
  y[..., S[w]]    = sum_k sum_j z_k[..., S[j]] * mixing[k, j, w]          (S = support, u tokens)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .groups import TokenSwapGroup

SYMMETRIZATIONS = ("equitune", "multi_equitune")
AVERAGES = ("log_probs", "logits", "probs")


@dataclass(frozen=True)
class CopyPlan:
    """The copies of an input and how their outputs combine (see the module docstring)."""

    support: torch.Tensor  # [u] long, the token ids moved by some factor
    input_maps: torch.Tensor  # [K, u] long, the token that support[j] becomes in copy k
    weights: torch.Tensor  # [K] float, weight of copy k on columns off the support
    mixing: torch.Tensor  # [K, u, u] float

    @property
    def num_copies(self) -> int:
        return self.input_maps.shape[0]


def count_copies(orders: list[int], symmetrization: str) -> int:
    """Inner passes per input row: prod |Gi| for equitune, sum |Gi| for multi_equitune (equal for one factor)."""
    return math.prod(orders) if symmetrization == "equitune" or len(orders) <= 1 else sum(orders)


def plan_copies(factors: list[TokenSwapGroup], symmetrization: str = "multi_equitune") -> CopyPlan:
    """Build the copy plan of a product of commuting factors."""
    if symmetrization not in SYMMETRIZATIONS:
        raise ValueError(f"unknown symmetrization {symmetrization!r}, choose one of {SYMMETRIZATIONS}")
    support = sorted(t for f in factors for t in f.support)
    local = {t: j for j, t in enumerate(support)}
    u = len(support)
    identity = torch.arange(u)

    def local_tables(table: torch.Tensor) -> torch.Tensor:  # a [..., V] token map restricted to the support
        return torch.tensor([local[t] for t in table[..., support].flatten().tolist()]).view(*table.shape[:-1], u)

    perms = [local_tables(f.permutation_tables()) for f in factors]  # [|Gi|, u] each
    canons = [local_tables(f.canonicalizer()) for f in factors]  # [u] each

    def compose(maps) -> torch.Tensor:  # maps act on disjoint parts of the support, so order is irrelevant
        out = identity
        for m in maps:
            out = m[out]
        return out

    copies = []  # (input map, [(weight, read map)]): y[v] += weight * z_copy[read(v)]
    if symmetrization == "equitune" or len(factors) <= 1:
        elements = [compose(g) for g in itertools.product(*perms)]
        copies = [(g, [(1.0 / len(elements), g)]) for g in elements]
    else:
        for i, own in enumerate(perms):
            others = [p for j, p in enumerate(perms) if j != i]
            canonical = compose(c for j, c in enumerate(canons) if j != i)
            symmetrisers = [compose(h) for h in itertools.product(*others)]
            weight = 1.0 / (len(factors) * len(own) * len(symmetrisers))
            for g in own:
                copies.append((g[canonical], [(weight, g[h]) for h in symmetrisers]))

    mixing = torch.zeros(len(copies), u, u, dtype=torch.float64)
    for k, (_, reads) in enumerate(copies):
        for weight, read in reads:
            mixing[k, read, identity] += weight
    weights = torch.tensor([sum(w for w, _ in reads) for _, reads in copies], dtype=torch.float64)
    support_ids = torch.tensor(support, dtype=torch.long)
    return CopyPlan(
        support=support_ids,
        input_maps=support_ids[torch.stack([m for m, _ in copies])],
        weights=weights.float(),
        mixing=mixing.float(),
    )


def support_lookup(support: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[V] long: position of each token in the support, -1 off the support."""
    lookup = torch.full((vocab_size,), -1, dtype=torch.long)
    lookup[support] = torch.arange(len(support))
    return lookup


def transform_ids(ids: torch.Tensor, lookup: torch.Tensor, input_maps: torch.Tensor) -> torch.Tensor:
    """[B, ...] ids -> [K*B, ...] ids of all copies, copy-major (row k*B + b is copy k of row b)."""
    position = lookup[ids]
    mapped = input_maps[:, position.clamp(min=0)]  # [K, B, ...]
    return torch.where(position >= 0, mapped, ids).flatten(0, 1)


def tile(tensor: torch.Tensor | None, num_copies: int) -> torch.Tensor | None:
    """Repeat a per-row tensor for every copy, copy-major like `transform_ids`."""
    if tensor is None:
        return None
    return tensor.repeat(num_copies, *[1] * (tensor.dim() - 1))


def expand_rows(index: torch.Tensor, num_copies: int, batch_size: int) -> torch.Tensor:
    """Map a row index over B rows (e.g. beam reordering) to the same index over all K*B copy rows."""
    offsets = torch.arange(num_copies, device=index.device) * batch_size
    return (offsets[:, None] + index[None, :]).flatten()


def combine(outputs: torch.Tensor, plan: CopyPlan, average: str = "log_probs") -> torch.Tensor:
    """[K*B, ..., V] raw logits of all copies -> [B, ..., V] symmetrised logits.

    `average` says what is combined: log-probabilities (the result is a log-linear pool), raw logits,
    or probabilities (the result is their log, so that softmax gives the averaged distribution).
    """
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}, choose one of {AVERAGES}")
    z = outputs.float()
    if average == "log_probs":
        z = z.log_softmax(-1)
    elif average == "probs":
        z = z.softmax(-1)
    z = z.unflatten(0, (plan.num_copies, -1))  # [K, B, ..., V]
    y = torch.einsum("k,k...->...", plan.weights.to(z.dtype), z)
    on_support = torch.einsum("k...j,kjw->...w", z[..., plan.support], plan.mixing.to(z.dtype))
    y = y.index_copy(-1, plan.support, on_support)
    return y.log() if average == "probs" else y
