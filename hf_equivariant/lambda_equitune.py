"""lambda-equitune and multi_lambda_equitune (Basu et al., NeurIPS 2023): equitune with learned, input-dependent
copy weights, registered as `symmetrization="lambda_equitune"` and `"multi_lambda_equitune"`.

    lambda_equitune        y(x) = sum_g lambda(g.x) g^-1 . M(g.x) / sum_g lambda(g.x)          (prod |Gi| copies)
    multi_lambda_equitune  y(x) = sum_i beta_i Sym_{-i}( sum_{g in Gi} lambda_g g^-1 . M(g.c_{-i}(x)) / sum_g lambda_g )
                           with lambda_g = lambda(g.c_{-i}(x))                                    (sum |Gi| copies)

per position t (y[t] is the combined next-token score there), with c_{-i} and Sym_{-i} as in multi_equitune
(`methods.per_factor_plan`). lambda(g.x)[t] = softplus(w . h_t(g.x) + b) / log 2 >= 0, h_t(g.x) the inner
model's last hidden state of copy g.x at position t; beta_i, the weight of factor i's branch, is given below
("branch weights"). The weights are a function of the copy's own hidden state, so acting on x permutes them
with the copies: both methods are exactly equivariant for any (w, b). The division by log 2 = softplus(0)
cancels in the normalisation; it makes a zero head give lambda = 1 exactly, so that at initialisation
(w = 0, b = 0) the methods are equitune and multi_equitune bit for bit.

**Branch weights** (`method_options={"branch_weights": ...}`).
- "lambda" (multi_lambda_equitune's default, recorded in the config of every model built since; a config
  saved before has no branch_weights and loads with "fixed", the form it was trained with): the branches are
  weighed by their mean lambda (`methods.weighted_branch_scale`),

      beta_i = Lambda_i / sum_j Lambda_j,   Lambda_i = 1/|Gi| sum_{g in Gi} lambda(g.c_{-i}(x))      (per position)

- "fixed": beta_i = 1/N, lambda normalised within each factor's branch only (`methods.branch_scale`; the issue's
  literal "multi_equitune with lambda weights over each factor's copies").
With "fixed" the head cannot discount a branch whose canonicalised factors hurt the input at hand (a sentence
about "she" read as "he" in the other factors' branches). Measured on SmolLM2 (docs/results/lambda_fairness.md,
the same data, steps and seed): held-out perplexity 101.83 with "lambda" against 104.94 with "fixed"
(multi_equitune 108.65, equitune 97.36), hence the default. For one factor, and for lambda_equitune's single
branch, both are the same.
- Exact: c_{-i}(h.x) = h_i.c_{-i}(x) for h in the product (canonicalising forgets the other factors, and the
  factors commute on disjoint tokens), so branch i's copies of h.x, {g h_i.c_{-i}(x) : g in Gi}, are those of x
  permuted. Hence Lambda_i(h.x) = Lambda_i(x): each beta_i is invariant. Each branch term is equivariant (the
  argument for the per-branch form: its weights move with its copies and Sym_{-i} symmetrises over the rest),
  and a combination of equivariant terms with invariant coefficients is equivariant.
- At a zero head it is multi_equitune **bit for bit**: lambda = 1.0 exactly, so Lambda_i = |Gi| / |Gi| = 1.0,
  sum_j Lambda_j = N and every factor on the plan's weights is N * 1.0 / N = 1.0 exactly, as with "fixed"
  (|b| * 1.0 / |b|).

The head (`LambdaWeights`, the wrapper's `copy_weights`) is the wrapper's own parameters: `save_pretrained`
saves it with the inner model and `from_pretrained` loads it back; `Trainer` trains it alone (inner model
frozen), with the inner model, or beside LoRA adapters (peft's `modules_to_save=["copy_weights.head"]`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from .methods import (
    MULTI_GROUP_PAPER,
    CopyScores,
    CopyWeights,
    SymmetrizationMethod,
    branch_scale,
    full_product_plan,
    per_factor_plan,
    register_symmetrization,
    weighted_branch_scale,
)

LAMBDA_PAPER = 'Basu et al., "Efficient Equivariant Transfer Learning from Pretrained Models", NeurIPS 2023'


BRANCH_WEIGHTS = {"fixed": branch_scale, "lambda": weighted_branch_scale}


class LambdaWeights(CopyWeights):
    """lambda(g.x)[t] = softplus(w . h_t(g.x) + b) / log 2, one weight per copy, row and position (see the module
    docstring); `head` is the linear map (w, b), zero-initialised. `branch_weights`: "fixed" (each branch keeps
    the plan's share 1/N) or "lambda" (branches weighed by their mean lambda; multi_lambda_equitune's default
    option)."""

    uses_hidden_states = True

    def __init__(self, config, branch_weights: str = "fixed"):
        super().__init__()
        if branch_weights not in BRANCH_WEIGHTS:
            raise ValueError(f"unknown branch_weights {branch_weights!r}, choose one of {tuple(BRANCH_WEIGHTS)}")
        self.branch_weights = branch_weights
        hidden_size = config.text_config.get_text_config(decoder=True).hidden_size
        self.head = nn.Linear(hidden_size, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """w = 0, b = 0: lambda = 1 for every copy, the uniform method."""
        init.zeros_(self.head.weight)
        init.zeros_(self.head.bias)

    def forward(self, scores: CopyScores) -> torch.Tensor:
        if scores.hidden_states is None:
            raise ValueError("LambdaWeights needs the inner model's last hidden states (CopyScores.hidden_states)")
        # w . h as a product and a sum rather than a matrix product: its rounding then does not depend on where
        # the weights lie in memory (a loaded head, memory-mapped at any offset, gives the same lambda bit for bit)
        linear = (scores.hidden_states.to(self.head.weight.dtype) * self.head.weight[0]).sum(-1) + self.head.bias
        lambdas = nn.functional.softplus(linear.float()) / math.log(2)
        return scores.per_copy(lambdas)

    def scale(self, scores: CopyScores) -> torch.Tensor:
        return BRANCH_WEIGHTS[self.branch_weights](self(scores), scores.branches)


register_symmetrization(SymmetrizationMethod(
    "lambda_equitune", full_product_plan, LAMBDA_PAPER,
    "the average over every element g of the product group of g^-1 . M(g . x), weighted per position by "
    "lambda(g . x) = softplus of a learned linear map of the inner model's last hidden state of that copy",
    weights=LambdaWeights, trainable=True))
register_symmetrization(SymmetrizationMethod(
    "multi_lambda_equitune", per_factor_plan, f"{MULTI_GROUP_PAPER}; {LAMBDA_PAPER}",
    "per factor, the lambda-weighted average over its elements with the other factors canonicalised "
    "(lambda = softplus of a learned linear map of each copy's last hidden state, per position), symmetrised "
    "over the other factors; then the factors weighed by their branches' mean lambda (with method_options "
    "branch_weights=\"fixed\", the mean over factors)",
    weights=LambdaWeights, trainable=True, options={"branch_weights": "lambda"},
    saved_options={"branch_weights": "fixed"}))
