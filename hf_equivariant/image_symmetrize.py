"""A registered symmetrisation method over a product of image groups, for invariant outputs, as tensor functions.

A method (`methods.get_symmetrization`) gives an `ElementPlan` over the factors' elements, whatever they act
on: copy k is the input acted on by element inputs[k, i] of each factor i, or canonicalised in the factors
where inputs[k, i] == CANONICAL. On images (the proofs are in the docstring of `image_groups`) copy k is
- g . x when no factor is canonicalised (equitune, equizero: prod |Gi| copies);
- g . c_S(x) when the factors in S are canonicalised and the factors commute, c_S's pattern summed over the
  acted factors so that c_S commutes with them (as with word swaps);
- g . c_G(x) when the factors do not commute: the whole group is canonicalised first, then each branch's
  element acts (the paper's rotation x flip design: 4 + 2 copies of the canonical image).
A canonicalising method (`SymmetrizationMethod.canonicalizes`) runs once, on c_G(x): the frame's elements
g^-1 act trivially on invariant outputs, so its mean over the frame is M(c_G(x)) (`image_plan`).
Copies of every image go through the inner model as one batch; equal copies run once when deduplicated.

The outputs (class logits, image-text logits) are invariant: h^-1 . z = z, so the plan's output terms reduce to
one weight per copy (`ElementPlan.copy_weights`), scaled within each branch by the method's input-dependent
weights, if it has any (equizero's argmin set of a proxy loss, see `methods.branch_scale`):
    y = sum_k w_k(x) a(z_k),
with a = identity ("logits"), log_softmax ("log_probs") or softmax ("probs", whose mean is returned as a log,
so that softmax(y) is the averaged distribution).

Scores whose probabilities are sigmoids (link "sigmoid": SigLIP scores each image-text pair on its own,
p = sigmoid(z)) average per entry instead:
- "probs": y = log(sum_k w_k sigmoid(z_k)) - log(sum_k w_k sigmoid(-z_k)), so that sigmoid(y) is the mean of
  the copies' probabilities (the weights sum to 1);
- "log_probs": the normalised geometric mean of the copies' Bernoulli distributions, whose logit is
  sum_k w_k (log sigmoid(z_k) - log sigmoid(-z_k)) = sum_k w_k z_k: the same as "logits".
Input-dependent weights (equizero) read each copy's softmax over the L scores with either link: for SigLIP's
image-text scores, the distribution over the texts (its bias cancels there), as in zero-shot classification.
"""

from __future__ import annotations

import torch

from .image_groups import canonicalize, commute, gather_pixels, pixel_tables
from .methods import (
    CANONICAL,
    SYMMETRIZATIONS,
    CopyScores,
    CopyWeights,
    ElementPlan,
    branch_scale,
    get_symmetrization,
)

AVERAGES = ("logits", "log_probs", "probs")
LINKS = ("softmax", "sigmoid")  # how scores become probabilities: over the last dimension, or entry by entry


def image_methods() -> list[str]:
    """The registered methods the image wrappers run: all but those whose copy weights read the inner model's
    hidden states (the image wrappers weigh copies by their scores only)."""
    return [name for name, method in SYMMETRIZATIONS.items()
            if method.weights is None or not method.weights.uses_hidden_states]


def image_plan(symmetrization: str, orders) -> ElementPlan:
    """The registered method's plan; for a canonicalising method one copy, canonical in every factor."""
    method = get_symmetrization(symmetrization)
    if not method.canonicalizes:
        return method.plan(orders)
    return ElementPlan(inputs=torch.full((1, len(orders)), CANONICAL), branches=torch.zeros(1, dtype=torch.long),
                       term_copies=torch.zeros(1, dtype=torch.long),
                       term_elements=torch.zeros(1, len(orders), dtype=torch.long),
                       term_weights=torch.ones(1, dtype=torch.float64))


def image_copies(pixel_values: torch.Tensor, factors, plan: ElementPlan) -> torch.Tensor:
    """[B, ..., H, W] images -> [K*B, ..., H, W] copies of `plan` (module docstring), copy-major."""
    height, width = pixel_values.shape[-2:]
    device = pixel_values.device
    tables = pixel_tables(factors, height, width, device)  # [prod |Gi|, H*W] in itertools.product order
    inputs = plan.inputs.to(device)
    orders = torch.tensor([f.order for f in factors], device=device)
    strides = torch.cat([orders.flip(0).cumprod(0).flip(0)[1:], orders.new_ones(1)])
    elements = (inputs.clamp(min=0) * strides).sum(1)  # a canonicalised factor contributes its identity
    canonical = inputs == CANONICAL  # [K, N]
    copies = pixel_values.new_empty(plan.num_copies, *pixel_values.shape)
    for pattern in torch.unique(canonical, dim=0):
        chosen = (canonical == pattern).all(1)
        if not pattern.any():
            base = pixel_values
        elif commute(factors):
            over = [f for f, c in zip(factors, pattern.tolist()) if c]
            acted = [f for f, c in zip(factors, pattern.tolist()) if not c]
            base = canonicalize(pixel_values, pixel_tables(over, height, width, device),
                                pixel_tables(acted, height, width, device) if acted else None)
        else:
            base = canonicalize(pixel_values, tables)
        copies[chosen] = gather_pixels(base, tables[elements[chosen]])
    return copies.flatten(0, 1)


def distinct_rows(copies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct rows of copies [R, ...], [R] long: which distinct row each copy is)."""
    distinct, inverse = torch.unique(copies.flatten(1), dim=0, return_inverse=True)
    return distinct.view(-1, *copies.shape[1:]), inverse


def combine(scores: torch.Tensor, inverse: torch.Tensor, plan: ElementPlan, average: str = "probs",
            weights: CopyWeights | None = None, pooled: bool = False, link: str = "softmax") -> torch.Tensor:
    """[U, L] scores of the distinct inner rows -> [B, L] invariant scores (module docstring).

    Copy row k*B + b is inner row inverse[k*B + b]. `weights` are the method's input-dependent copy weights
    (they see the copies' log-probabilities over L). `link` says how scores become probabilities ("softmax"
    over L, or "sigmoid" entry by entry). With `pooled`, `scores` are features to average with the plan's
    fixed weights only (an invariant embedding; `average`, `weights` and `link` do not apply).
    """
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}, choose one of {AVERAGES}")
    if link not in LINKS:
        raise ValueError(f"unknown link {link!r}, choose one of {LINKS}")
    branches = plan.branches.to(scores.device)
    factor = plan.copy_weights.to(scores.device)[:, None]  # [K, 1] float64
    if weights is not None and not pooled:
        chosen = weights(CopyScores(scores, None, inverse, branches))  # [K, B]
        factor = factor * branch_scale(chosen.double(), branches)

    def mean(values: torch.Tensor) -> torch.Tensor:
        per_copy = values[inverse].unflatten(0, (plan.num_copies, -1))  # [K, B, L]
        kept = factor != 0  # a copy left out (equizero) contributes nothing, even an infinite score
        return torch.where(kept[..., None], per_copy * factor[..., None].to(values.dtype), 0).sum(0)

    if pooled or average == "logits" or (average == "log_probs" and link == "sigmoid"):
        return mean(scores)
    if average == "log_probs":
        return mean(scores.float().log_softmax(-1))
    # "probs" in float64: tiny probabilities survive the mean and the log
    if link == "sigmoid":
        return (mean(scores.double().sigmoid()).log() - mean((-scores.double()).sigmoid()).log()).float()
    return mean(scores.double().softmax(-1)).log().float()
