"""Symmetrisation of a model over a product of word-swap groups, as pure tensor functions.

A *plan* lists the K copies of an input that go through the inner model M, and how their outputs
z_k (log-probabilities, logits or probabilities over the vocabulary) combine into one output; it is a
registered method's `methods.ElementPlan` (copies and terms as group elements) realised on token ids.
For example

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

from dataclasses import dataclass

import torch

from .groups import TokenSwapGroup
from .methods import get_symmetrization
from .rows import CopyRows

AVERAGES = ("log_probs", "logits", "probs")


@dataclass(frozen=True)
class CopyPlan:
    """The copies of an input and how their outputs combine (see the module docstring): a method's
    `ElementPlan` realised on token ids."""

    support: torch.Tensor  # [u] long, the token ids moved by some factor
    input_maps: torch.Tensor  # [K, u] long, the token that support[j] becomes in copy k
    weights: torch.Tensor  # [K] float, weight of copy k on columns off the support
    mixing: torch.Tensor  # [K, u, u] float
    branches: torch.Tensor  # [K] long, the plan's branches (see `methods`)

    @property
    def num_copies(self) -> int:
        return self.input_maps.shape[0]


def plan_copies(factors: list[TokenSwapGroup], symmetrization: str = "multi_equitune") -> CopyPlan:
    """The copy plan of the registered method `symmetrization` over a product of commuting factors.

    Element e of factor i is its permutation table e; canonicalising factor i maps every class's word to
    the class-0 word of its orbit. The factors move disjoint tokens, so their maps compose in any order.
    """
    elements = get_symmetrization(symmetrization).plan([f.order for f in factors])
    support = sorted(t for f in factors for t in f.support)
    local = {t: j for j, t in enumerate(support)}
    u = len(support)
    identity = torch.arange(u)

    def local_tables(table: torch.Tensor) -> torch.Tensor:  # a [..., V] token map restricted to the support
        return torch.tensor([local[t] for t in table[..., support].flatten().tolist()]).view(*table.shape[:-1], u)

    # per factor, its elements' maps on the support, then (row CANONICAL = -1) its canonicaliser
    tables = [torch.cat([local_tables(f.permutation_tables()), local_tables(f.canonicalizer())[None]])
              for f in factors]

    def maps(chosen: torch.Tensor) -> torch.Tensor:  # [M, N] elements -> [M, u] local maps
        out = identity.expand(chosen.shape[0], u)
        for i, table in enumerate(tables):
            out = torch.gather(table[chosen[:, i]], 1, out)
        return out

    reads = maps(elements.term_elements)  # [R, u]: term t adds weight * z_k[read(j)] to column j
    mixing = torch.zeros(elements.num_copies, u, u, dtype=torch.float64)
    mixing.index_put_((elements.term_copies[:, None].expand_as(reads), reads, identity.expand_as(reads)),
                      elements.term_weights[:, None].expand_as(reads).clone(), accumulate=True)
    support_ids = torch.tensor(support, dtype=torch.long)
    return CopyPlan(
        support=support_ids,
        input_maps=support_ids[maps(elements.inputs)],
        weights=elements.copy_weights.float(),
        mixing=mixing.float(),
        branches=elements.branches,
    )


def support_lookup(support: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[V] long: position of each token in the support, -1 off the support."""
    lookup = torch.full((vocab_size,), -1, dtype=torch.long)
    lookup[support] = torch.arange(len(support))
    return lookup


def transform_ids(ids: torch.Tensor, lookup: torch.Tensor, input_maps: torch.Tensor,
                  acts: torch.Tensor | None = None) -> torch.Tensor:
    """[B, ...] ids -> [K*B, ...] ids of all copies, copy-major (row k*B + b is copy k of row b).

    `acts` ([B, ...] bool, e.g. the word occurrences of `boundaries`) limits the action to those positions.
    """
    position = lookup[ids]
    mapped = input_maps[:, position.clamp(min=0)]  # [K, B, ...]
    moved = position >= 0 if acts is None else (position >= 0) & acts
    return torch.where(moved, mapped, ids).flatten(0, 1)


def class_keys(factors: list[TokenSwapGroup], vocab_size: int) -> torch.Tensor:
    """[V] long: the class of each token in its factor (orbit[c] is class c's token), -1 off the support."""
    keys = torch.full((vocab_size,), -1, dtype=torch.long)
    for f in factors:
        orbits = torch.tensor(f.orbits, dtype=torch.long)
        keys[orbits] = torch.arange(orbits.shape[1]).expand_as(orbits)
    return keys


def frame(copies: torch.Tensor, keys: torch.Tensor, batch_size: int,
          prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame canonicalisation of B rows from their K copies, one per element of the product ([K*B, T]).

    The canonical form of a prefix x<=t is, among its copies, the one whose sequence of classes (`keys`) is
    lexicographically least: factor by factor, the classes in the order of their first word go to the least
    classes the factor allows (0, 1, 2, ... for a symmetric factor; for a cyclic one the first word's class
    goes to 0). It depends on the orbit only, and the frame of a longer prefix lies in that of a shorter
    one, so the least copy of the whole row is canonical at every position.
    `prefix` ([K*B, S], the same elements' copies of what comes before, e.g. a seq2seq model's encoder ids):
    the frame is then that of the concatenation prefix ++ copies, read at the positions of `copies` only
    (x<=t above is the whole prefix and the first t+1 tokens of the row).
    Returns (for every copy row the row's canonical copy, [K*B, T]; [K, B, T] bool: whether element k sends
    x<=t to its canonical form, i.e. is in the frame of the prefix).
    """
    num_copies = copies.shape[0] // batch_size
    sequence = copies if prefix is None else torch.cat([prefix, copies], dim=1)
    classes = keys[sequence]
    owners = torch.arange(copies.shape[0], device=copies.device) % batch_size
    rank = torch.unique(torch.cat([owners[:, None], classes], dim=1), dim=0, return_inverse=True)[1]
    least = rank.view(num_copies, batch_size).argmin(0) * batch_size + torch.arange(batch_size, device=copies.device)
    in_frame = (classes.view(num_copies, batch_size, -1) != classes[least]).cumsum(-1) == 0
    return copies[least].repeat(num_copies, 1), in_frame[..., sequence.shape[1] - copies.shape[1]:]


class Pool:
    """The running combination of the inner rows' outputs, fed in consecutive blocks (see `combine`).

    `scale` ([K, B, ...] over the scored positions, or None): input-dependent factors on the plan's copy
    weights (`methods.branch_scale` of a method's `CopyWeights`); a copy with factor 0 is left out, so
    that its scores (even -inf) never reach the result.
    """

    def __init__(self, plan: CopyPlan, rows: CopyRows, average: str = "log_probs",
                 scale: torch.Tensor | None = None):
        if average not in AVERAGES:
            raise ValueError(f"unknown average {average!r}, choose one of {AVERAGES}")
        self.plan, self.rows, self.average, self.scale = plan, rows, average, scale
        device = rows.inverse.device
        copy_weights = plan.weights.repeat_interleave(rows.batch_size).to(device)  # [K*B]
        if scale is not None:
            copy_weights = copy_weights.view(-1, *[1] * (scale.dim() - 2)) * scale.flatten(0, 1)
        self.row_weights = torch.zeros(rows.num_rows, *copy_weights.shape[1:], device=device).index_add_(
            0, rows.inverse, copy_weights)  # [U] or [U, ...]: the weight of each inner row on columns off the support
        self.y, self.on_support, self.start = None, [], 0

    def add(self, block: torch.Tensor) -> None:
        """The inner logits [n, ..., V] of the next n inner rows."""
        z = block.float()
        if self.average == "log_probs":
            z = z.log_softmax(-1)
        elif self.average == "probs":
            z = z.double().softmax(-1)  # float64: tiny probabilities do not underflow before the log
        end = self.start + z.shape[0]
        weights = self.row_weights[self.start:end]
        weights = weights.view(*weights.shape, *[1] * (z.dim() - weights.dim()))
        weighted = z * weights
        if self.scale is not None:
            weighted = weighted.masked_fill(weights == 0, 0)  # a left-out row's -inf: 0 * -inf would be NaN
        if self.y is None:
            self.y = z.new_zeros(self.rows.batch_size, *z.shape[1:])
        self.y = self.y.index_add(0, self.rows.owners[self.start:end], weighted)
        self.on_support.append(z[..., self.plan.support])
        self.start = end

    def result(self, acted: torch.Tensor | None = None) -> torch.Tensor:
        """[B, ..., V] symmetrised scores, once every inner row was added (`acted`: see `combine`)."""
        plan, rows, y = self.plan, self.rows, self.y
        z_support = torch.cat(self.on_support)[rows.inverse].unflatten(0, (plan.num_copies, rows.batch_size))
        mixing = plan.mixing.to(y.dtype)
        minus_infinity = torch.isneginf(z_support)
        z_support = z_support.masked_fill(minus_infinity, 0)
        if self.scale is not None:
            z_support = z_support * self.scale[..., None].to(y.dtype)
            minus_infinity = minus_infinity & (self.scale[..., None] > 0)
        mixed = torch.einsum("k...j,kjw->...w", z_support, mixing)
        reads_minus_infinity = torch.einsum("k...j,kjw->...w", minus_infinity.to(y.dtype), (mixing != 0).to(y.dtype))
        mixed = mixed.masked_fill(reads_minus_infinity > 0, float("-inf"))
        if acted is not None:
            mixed = torch.where(acted, mixed, y[..., plan.support])
        y = y.index_copy(-1, plan.support, mixed)
        return y.log().float() if self.average == "probs" else y


def combine(outputs, plan: CopyPlan, rows: CopyRows, average: str = "log_probs",
            acted: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Inner logits of the distinct rows -> [B, ..., V] symmetrised logits.

    `outputs` is the [U, ..., V] tensor of the inner rows of `rows`, or an iterable of consecutive
    blocks of it (so that only one block of logits is held at a time). `average` says what is
    combined: log-probabilities (a log-linear pool), raw logits, or probabilities (the result is their
    log, so that softmax gives the averaged distribution). `acted` ([B, ..., u] bool) says on which
    support columns the group acts at each position; the others are fixed columns, combined like the
    columns off the support (the word action of `boundaries`). A score of -inf in a copy that a column
    reads gives -inf there (the mixing's zero weights never meet it: 0 * -inf would be NaN). `scale`:
    input-dependent factors on the copy weights (see `Pool`).
    """
    pool = Pool(plan, rows, average, scale)
    for block in [outputs] if isinstance(outputs, torch.Tensor) else outputs:
        pool.add(block)
    return pool.result(acted)
