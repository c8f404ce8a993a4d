"""Symmetrisation methods: a registry, like peft's `register_peft_method`.

A method says, whatever the group acts on (token ids here; images elsewhere), for a product of N factors
of orders |G1|, ..., |GN|:

- its **copy plan** (`ElementPlan`): the K copies of an input that go through the inner model M, each the
  input acted on by one element per factor (or canonicalised in some factors), and the terms of the output
  y = sum_t w_t * h_t^-1 . M(copy_{k_t}), where h_t^-1 . acts on an output (permutes the vocabulary of a
  language model; nothing for an invariant output). The plan depends on the orders only.
- its **copy weights**: `None` for the plan's fixed weights, or a module (`CopyWeights`) that turns the
  copies' logits or log-probabilities (and, when it asks, the inner model's last hidden states) into
  input-dependent weights per copy, row and position. By default these are normalised within each *branch*
  of copies (all copies for a full-product method; the copies of one factor for a multi-group one): copy k
  of branch b gets the plan's weight scaled by |b| * a_k / sum_{j in b} a_j (`branch_scale`). With a_k = 1
  that is the plan itself. A module may also weigh the branches by their weights (`weighted_branch_scale`).
  equizero: a_k = 1 on the argmin set of a proxy loss; lambda-equitune: a_k = lambda(hidden state of copy k).
- whether it *canonicalises*: then the copies are the input's frame, the elements g that send it to its
  canonical form (an orbit-invariant choice the domain makes; the elements that leave it undetermined, its
  stabiliser, all give the same copy), the inner model runs once on that canonical copy, and the output is
  the mean over the frame of g^-1 . M(g . x), per position (Kaba et al. 2023). For a seq2seq model the
  input at a decoder position is the encoder ids followed by the decoder ids up to there (`modeling_seq2seq`).
- its citation for the model card, and whether it has trainable parameters.

`symmetrization="..."` in the library (config, `make_equivariant`, `from_base_model`, `from_pretrained`, the
model card) is looked up here with `get_symmetrization`; `register_symmetrization` adds a method. (The command
line lists the built-in methods, kept equal to this registry by a test, so that its `--help` needs no torch.)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

CANONICAL = -1  # in ElementPlan.inputs: the copy canonicalises that factor instead of acting on it


@dataclass(frozen=True)
class ElementPlan:
    """Copies of an input as group elements, independent of what the group acts on.

    Element e of factor i is an index in 0..|Gi|-1 (0 the identity).
    - `inputs` [K, N] long: copy k is the input acted on by element inputs[k, i] of each factor i, or
      canonicalised in factor i where inputs[k, i] == CANONICAL (its orbit-invariant representative).
    - `branches` [K] long: input-dependent weights are normalised within each branch.
    - output y = sum_t term_weights[t] * (term_elements[t])^-1 . z_{term_copies[t]}, z_k = M(copy k);
      `term_copies` [R] long, `term_elements` [R, N] long, `term_weights` [R] float64 (summing to one).
    """

    inputs: torch.Tensor
    branches: torch.Tensor
    term_copies: torch.Tensor
    term_elements: torch.Tensor
    term_weights: torch.Tensor

    @property
    def num_copies(self) -> int:
        return self.inputs.shape[0]

    @property
    def copy_weights(self) -> torch.Tensor:
        """[K] float64: the total weight of each copy's terms."""
        return torch.zeros(self.num_copies, dtype=torch.float64).index_add_(0, self.term_copies, self.term_weights)


def _plan(copies: list[tuple[tuple[int, ...], int, list[tuple[float, tuple[int, ...]]]]]) -> ElementPlan:
    """An ElementPlan from (input elements, branch, [(weight, read elements)]) per copy."""
    terms = [(k, weight, read) for k, (_, _, reads) in enumerate(copies) for weight, read in reads]
    return ElementPlan(
        inputs=torch.tensor([inputs for inputs, _, _ in copies], dtype=torch.long),
        branches=torch.tensor([branch for _, branch, _ in copies], dtype=torch.long),
        term_copies=torch.tensor([k for k, _, _ in terms], dtype=torch.long),
        term_elements=torch.tensor([read for _, _, read in terms], dtype=torch.long),
        term_weights=torch.tensor([weight for _, weight, _ in terms], dtype=torch.float64),
    )


def full_product_plan(orders: Sequence[int]) -> ElementPlan:
    """prod |Gi| copies, one per element g of the product: y = 1/|G| sum_g g^-1 . M(g . x)."""
    elements = list(itertools.product(*(range(n) for n in orders)))
    return _plan([(g, 0, [(1.0 / len(elements), g)]) for g in elements])


def per_factor_plan(orders: Sequence[int]) -> ElementPlan:
    """sum |Gi| copies (the multi-group design; the full product for one factor):
    y = 1/N sum_i Sym_{-i}( 1/|Gi| sum_{g in Gi} g^-1 . M(g . c_{-i}(x)) ),
    where c_{-i} canonicalises every factor but i and Sym_{-i}(y) = mean over h in G_{-i} of h . y
    (so copy g of branch i has the terms g h for every h in G_{-i}, in the product's order)."""
    if len(orders) <= 1:
        return full_product_plan(orders)
    copies = []
    for i, order in enumerate(orders):
        others = [range(n) for j, n in enumerate(orders) if j != i]
        symmetrisers = list(itertools.product(*others))
        weight = 1.0 / (len(orders) * order * len(symmetrisers))
        for g in range(order):
            inputs = tuple(g if j == i else CANONICAL for j in range(len(orders)))
            reads = [(weight, h[:i] + (g,) + h[i:]) for h in symmetrisers]
            copies.append((inputs, i, reads))
    return _plan(copies)


@dataclass(frozen=True)
class CopyScores:
    """What input-dependent copy weights see: the inner model's distinct rows and how copies map onto them.

    - `logits` [U, ..., V]: scores of the distinct inner rows, at the positions scored; `log_probs` their
      log-softmax in float32, computed when first read (weights that never read it, like lambda's, cost no
      pass over the vocabulary).
    - `hidden_states` [U, ..., H]: the inner model's last hidden state there (None unless asked for).
    - `inverse` [K*B] long: copy row k*B + b (copy k of input row b) is inner row inverse[k*B + b].
    - `branches` [K] long: the plan's branches.
    """

    logits: torch.Tensor
    hidden_states: torch.Tensor | None
    inverse: torch.Tensor
    branches: torch.Tensor

    @functools.cached_property
    def log_probs(self) -> torch.Tensor:
        return self.logits.float().log_softmax(-1)

    @property
    def num_copies(self) -> int:
        return self.branches.shape[0]

    def per_copy(self, values: torch.Tensor) -> torch.Tensor:
        """[U, ...] per inner row -> [K, B, ...] per copy."""
        return values[self.inverse].unflatten(0, (self.num_copies, -1))


class CopyWeights(nn.Module):
    """Input-dependent copy weights: forward(CopyScores) -> [K, B, ...] weights >= 0 (see the module docstring).

    They must be a function of the copy's own outputs (or be equal across a branch's copies), so that acting
    on the input permutes them with the copies: that keeps the method exactly equivariant. `scale` turns them
    into the factors on the plan's copy weights: normalised within each branch (`branch_scale`) unless a
    method says otherwise.
    """

    uses_hidden_states = False

    def forward(self, scores: CopyScores) -> torch.Tensor:
        raise NotImplementedError

    def scale(self, scores: CopyScores) -> torch.Tensor:
        """[K, B, ...] factors on the plan's copy weights."""
        return branch_scale(self(scores), scores.branches)

    def reset_parameters(self) -> None:
        """Initialise the parameters (the wrapper's `_init_weights` calls it for parameters a checkpoint lacks);
        with `transformers.initialization`, which leaves loaded parameters alone. Nothing for no parameters."""


PROXY_LOSSES = {
    # per position, from log-probabilities [..., V]; both are invariant to permuting the vocabulary
    "entropy": lambda log_probs: -(log_probs.exp() * log_probs).nan_to_num(0.0).sum(-1),
    "max_prob": lambda log_probs: -log_probs.amax(-1).exp(),
}


class ArgminWeights(CopyWeights):
    """equizero's selection: a_k = 1 on every copy whose proxy loss L(M(g_k . x)) is within `tie_tolerance` of
    the minimum over its branch (per row and position), 0 elsewhere.

    L is "entropy" (of the next-token distribution) or "max_prob" (minus its top-1 probability). Acting on
    the input permutes a branch's copies, and L is invariant to the output action, so the argmin set moves
    with the input. Copies that are equal (an input fixed by some element) tie exactly; averaging over the
    whole argmin set (never picking one of them) is what keeps the method exact.
    """

    def __init__(self, config=None, proxy_loss: str = "entropy", tie_tolerance: float = 1e-5):
        super().__init__()
        if proxy_loss not in PROXY_LOSSES:
            raise ValueError(f"unknown proxy_loss {proxy_loss!r}, choose one of {tuple(PROXY_LOSSES)}")
        self.proxy_loss, self.tie_tolerance = proxy_loss, tie_tolerance

    def forward(self, scores: CopyScores) -> torch.Tensor:
        loss = scores.per_copy(PROXY_LOSSES[self.proxy_loss](scores.log_probs))  # [K, B, ...]
        column = scores.branches.view(-1, *[1] * (loss.dim() - 1))
        best = loss.new_full((int(scores.branches.max()) + 1, *loss.shape[1:]), float("inf"))
        best = best.scatter_reduce(0, column.expand_as(loss), loss, "amin")
        return (loss <= best[scores.branches] + self.tie_tolerance).to(loss.dtype)


def branch_scale(weights: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
    """[K, B, ...] weights a_k >= 0 -> factors on the plan's copy weights: |b| * a_k / sum_{j in b} a_j for the
    branch b of copy k (1 where the weights are equal across the branch)."""
    column = branches.view(-1, *[1] * (weights.dim() - 1))
    num_branches = int(branches.max()) + 1
    totals = weights.new_zeros(num_branches, *weights.shape[1:]).scatter_add_(0, column.expand_as(weights), weights)
    sizes = torch.bincount(branches, minlength=num_branches).to(weights.dtype)
    return weights * sizes[column] / totals[branches]


def weighted_branch_scale(weights: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
    """[K, B, ...] weights a_k >= 0 -> factors a_k / mean_b A_b on the plan's copy weights, A_b = mean_{j in b} a_j.

    For a plan whose branch b holds the fraction 1/N of the output spread evenly over its copies (the
    per-factor plan), copy k of branch b then weighs beta_b * a_k / sum_{j in b} a_j with branch weight
    beta_b = A_b / sum_c A_c: the weights normalised within each branch, and the branches weighed by their
    mean weight. With a_k = 1 every factor is 1.0 exactly (A_b = |b| / |b|, sum_c A_c = N, N * 1 / N)."""
    column = branches.view(-1, *[1] * (weights.dim() - 1))
    num_branches = int(branches.max()) + 1
    totals = weights.new_zeros(num_branches, *weights.shape[1:]).scatter_add_(0, column.expand_as(weights), weights)
    sizes = torch.bincount(branches, minlength=num_branches).to(weights.dtype)
    means = totals / sizes.view(-1, *[1] * (weights.dim() - 1))
    return weights * num_branches / means.sum(0)


@dataclass(frozen=True)
class SymmetrizationMethod:
    """A symmetrisation method (see the module docstring).

    - `plan(orders)`: its copy plan.
    - `weights(config, **options)`: its input-dependent copy weights, a `CopyWeights` module built from the
      wrapper's `EquivariantConfig` (the inner model's sizes are in `config.text_config`) and
      `config.method_options`; or None for the plan's fixed weights.
    - `citation`: the paper, as the model card cites it; `description`: one line for the card.
    - `trainable`: whether its weights module has parameters to train.
    - `canonicalizes`: whether its copies are the input's frame (see the module docstring; its plan must be
      the full product, one copy per element, and it has no weights).
    - `options`: default options of its weights; a new model records them in `config.method_options`, so that
      a saved model reads back the choice it was saved with even if a default changes later.
    - `saved_options`: what a saved config that lacks an option meant (the default before it was recorded).
    """

    name: str
    plan: Callable[[Sequence[int]], ElementPlan]
    citation: str
    description: str
    weights: Callable[..., CopyWeights] | None = None
    trainable: bool = False
    canonicalizes: bool = False
    options: dict = field(default_factory=dict)
    saved_options: dict = field(default_factory=dict)

    def num_copies(self, orders: Sequence[int]) -> int:
        """Copies per input row (the plan's)."""
        return self.plan(orders).num_copies

    def inner_passes(self, orders: Sequence[int]) -> int:
        """Inner passes per input row: one for a canonicalising method (every copy runs the canonical one),
        else one per copy (fewer where deduplication finds equal copies)."""
        return 1 if self.canonicalizes else self.num_copies(orders)


SYMMETRIZATIONS: dict[str, SymmetrizationMethod] = {}
DEFAULT_SYMMETRIZATION = "multi_equitune"


def register_symmetrization(method: SymmetrizationMethod, exist_ok: bool = False) -> SymmetrizationMethod:
    """Make `symmetrization=method.name` available to the wrappers (make_equivariant, from_pretrained, configs)."""
    if method.name in SYMMETRIZATIONS and not exist_ok:
        raise ValueError(f"a symmetrization named {method.name!r} is already registered (pass exist_ok=True)")
    SYMMETRIZATIONS[method.name] = method
    return method


def get_symmetrization(name: str) -> SymmetrizationMethod:
    """The registered method `name`; an unknown name lists the registered ones."""
    if name not in SYMMETRIZATIONS:
        raise ValueError(f"unknown symmetrization {name!r}, choose one of {tuple(SYMMETRIZATIONS)}")
    return SYMMETRIZATIONS[name]


EQUITUNE_PAPER = 'Basu et al., "Equi-Tuning: Group Equivariant Fine-Tuning of Pretrained Models", AAAI 2023'
MULTI_GROUP_PAPER = ('Baltaji, Basu, Varshney, "Efficient Model-Agnostic Multi-Group Equivariant Networks", '
                     "TMLR 2024")

register_symmetrization(SymmetrizationMethod(
    "equitune", full_product_plan, EQUITUNE_PAPER,
    "the average over every element g of the product group of g^-1 . M(g . x)"))
register_symmetrization(SymmetrizationMethod(
    "multi_equitune", per_factor_plan, MULTI_GROUP_PAPER,
    "per factor, the average over its elements with the other factors canonicalised, symmetrised over the "
    "other factors; then the mean over factors"))

EQUIZERO_PAPER = 'Basu et al., "Efficient Equivariant Transfer Learning from Pretrained Models", NeurIPS 2023'
register_symmetrization(SymmetrizationMethod(
    "equizero", full_product_plan, EQUIZERO_PAPER,
    "g*^-1 . M(g* . x) with g* the element of the product group whose copy has the least proxy loss (entropy by "
    "default), per position; ties averaged", weights=ArgminWeights, options={"proxy_loss": "entropy"}))
register_symmetrization(SymmetrizationMethod(
    "multi_equizero", per_factor_plan, f"{MULTI_GROUP_PAPER}; {EQUIZERO_PAPER}",
    "per factor, equizero over its elements with the other factors canonicalised, symmetrised over the other "
    "factors; then the mean over factors", weights=ArgminWeights, options={"proxy_loss": "entropy"}))

CANONICALIZATION_PAPER = 'Kaba et al., "Equivariance with Learned Canonicalization Functions", ICML 2023'
register_symmetrization(SymmetrizationMethod(
    "canonicalize", full_product_plan, CANONICALIZATION_PAPER,
    "frame canonicalisation: g_x^-1 . M(g_x . x), with g_x sending, factor by factor, the classes in the order "
    "of their first word to the least classes (0, 1, 2, ...); the elements this leaves open are averaged over. "
    "The inner model runs once per input, on the canonical copy", canonicalizes=True))


def count_copies(orders: Sequence[int], symmetrization: str) -> int:
    """Inner passes per input row of the registered method `symmetrization` (prod |Gi| for equitune, ...)."""
    return get_symmetrization(symmetrization).num_copies(orders)

