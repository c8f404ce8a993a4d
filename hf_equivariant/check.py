"""A public equivariance check, in the spirit of escnn's `check_equivariance` and e3nn's `assert_equivariant`.

For every element g of the model's product group it measures

    error(g) = max over rows, positions t and tokens v of | log p(v | g·x)_t[p_t(v)] - log p(v | x)_t |

where g·x is the model's own action on its inputs (whole words with the word action, every group token with
the token action; encoder and decoder ids for seq2seq models) and p_t is g's permutation of the scores at
position t (restricted, with the word action, to the group tokens that would begin a word there). Scores
that are -inf (the glue mask) must be -inf in both. Run it on your own fine-tuned checkpoints: an exact
model gives errors at the level of float rounding (about 1e-6 in fp32).
"""

from __future__ import annotations

import itertools

import torch

from . import boundaries


def element_permutations(model) -> dict[str, torch.Tensor]:
    """Every element of the model's product group, named "factor(class permutation) x ...", as its [V] token
    permutation p_g (p_g[v] = g(v))."""
    factors = model.config.factors
    tables = [f.permutation_tables() for f in factors]
    elements = {}
    for choice in itertools.product(*(range(f.order) for f in factors)):
        permutation = torch.arange(tables[0].shape[1])
        for table, g in zip(tables, choice):
            permutation = table[g][permutation]
        name = " x ".join(f"{f.name}{f.elements[g]}" for f, g in zip(factors, choice))
        elements[name] = permutation.to(model.plan_support.device)
    return elements


def _act(model, ids: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    if model.acts_on_words:
        return boundaries.act_on_words(ids, permutation, model.plan_before, model.plan_after)
    return permutation[ids]


def _output_permutation(model, ids: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """[B, T, V] long: the permutation of the scores at each position (p_t)."""
    acted = torch.ones(*ids.shape, len(model.plan_support), dtype=torch.bool, device=ids.device)
    if model.acts_on_words:
        acted = boundaries.acted_columns(ids, model.plan_before, model.plan_after, model.plan_support)
    per_position = torch.arange(len(permutation), device=ids.device).repeat(*ids.shape, 1)
    moved = torch.where(acted, permutation[model.plan_support], model.plan_support)
    return per_position.index_copy(-1, model.plan_support, moved)


def check_equivariance(model, inputs: dict, atol: float = 1e-4) -> dict[str, float]:
    """The largest equivariance error of `model` (an equivariant wrapper) on `inputs` (tokenizer output with
    `input_ids`, and `decoder_input_ids` for a seq2seq model), for every group element.

    Returns {element name: error}; raises AssertionError naming the worst element if an error exceeds `atol`.
    """
    key = "decoder_input_ids" if model.config.is_encoder_decoder else "input_ids"
    if "input_ids" not in inputs or (model.config.is_encoder_decoder and key not in inputs):
        raise ValueError(f"check_equivariance needs the token ids the group acts on: input_ids"
                         f"{' and decoder_input_ids' if model.config.is_encoder_decoder else ''}")
    was_training = model.training
    model.eval()
    errors = {}
    with torch.no_grad():
        reference = model(**inputs).logits.float().log_softmax(-1)
        for name, permutation in element_permutations(model).items():
            moved = {**inputs, **{k: _act(model, inputs[k], permutation) for k in {"input_ids", key}}}
            output = model(**moved).logits.float().log_softmax(-1)
            back = output.gather(-1, _output_permutation(model, inputs[key], permutation))
            masked = torch.isneginf(reference)
            if not torch.equal(masked, torch.isneginf(back)):
                errors[name] = float("inf")
                continue
            errors[name] = (back - reference).masked_fill(masked, 0).abs().max().item()
    model.train(was_training)
    worst = max(errors, key=errors.get)
    if errors[worst] > atol:
        raise AssertionError(f"not equivariant: element {worst} has error {errors[worst]:.3g} > atol {atol} "
                             f"({sum(e > atol for e in errors.values())} of {len(errors)} elements fail)")
    return errors
