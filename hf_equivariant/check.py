"""A public equivariance check, in the spirit of escnn's `check_equivariance` and e3nn's `assert_equivariant`.

It reads the model's factors (`model.config.factors`) through the group protocol (`symmetry`). Where no
factor permutes the outputs (`output_permutations() is None`: the image wrappers), it checks invariance: for
every element g = (g1, ..., gN) of the product, acting as g1 o ... o gN (each factor's `act`),

    error(g) = max over images and columns | y(g·x) - y(x) |

where y is the class logits of an image classifier and logits_per_image of a CLIP model (whose texts,
given with the images, stay as they are). Otherwise (the text wrappers) it measures, for every element,

    error(g) = max over rows, positions t and tokens v of | log p(v | g·x)_t[p_t(v)] - log p(v | x)_t |

where g·x is the model's own action on its inputs (whole words with the word action, every group token with
the token action; encoder and decoder ids for seq2seq models) and p_t is g's permutation of the scores at
position t (restricted, with the word action, to the group tokens that would begin a word there). Scores
that are -inf (the glue mask) must be -inf in both. Run it on your own fine-tuned checkpoints: an exact
model gives errors at the level of float rounding (about 1e-6 in fp32). An exact image wrapper often gives
exactly 0: all moved images go through it in one batch, and the copies of g·x are those of x in another order.
"""

from __future__ import annotations

import itertools

import torch

from . import boundaries


def element_names(factors) -> list[str]:
    """The product's elements in `itertools.product` order, named "factor(element) x ...": "gender(1, 0) x
    race(0, 1, 2)" (class permutations), "rot90(1) x hflip(0)" (quarter turns, mirrored or not)."""
    def named(factor, element) -> str:
        return f"{factor.name}({', '.join(map(str, element if isinstance(element, tuple) else (element,)))})"

    return [" x ".join(map(named, factors, choice)) for choice in itertools.product(*(f.elements for f in factors))]


def element_permutations(model, tables: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every element of the model's product group as its [V] token permutation p_g (p_g[v] = g(v)), composed
    from the factors' `output_permutations()` tables."""
    permutations = []
    for choice in itertools.product(*(range(len(table)) for table in tables)):
        permutation = torch.arange(tables[0].shape[1])
        for table, g in zip(tables, choice):
            permutation = table[g][permutation]
        permutations.append(permutation.to(model.plan_support.device))
    return dict(zip(element_names(model.config.factors), permutations))


def act_on_product(factors, x: torch.Tensor) -> torch.Tensor:
    """[prod |Gi|, *x.shape]: every element (g1, ..., gN) of the product applied to x as g1 o ... o gN, in
    `itertools.product` order, by each factor's `act` (gN acts first)."""
    copies = x
    for factor in reversed(factors):
        copies = factor.act(copies, torch.arange(factor.order, device=x.device))
    return copies.flatten(0, len(factors) - 1)


IMAGE_CHECK_INPUTS = {"pixel_values", "input_ids", "attention_mask", "position_ids"}  # images, and texts to score


def _invariance_errors(model, inputs: dict) -> dict[str, float]:
    """{element name: max |y(g·x) - y(x)|} for a model whose outputs no factor permutes; every moved copy of
    every image goes through the model in one batch."""
    if "pixel_values" not in inputs:
        raise ValueError(f"check_equivariance needs the pixel_values the groups act on, got {sorted(inputs)}")
    if other := sorted(set(inputs) - IMAGE_CHECK_INPUTS):
        raise ValueError(f"check_equivariance on an image model takes pixel_values and, for an image-text model, "
                         f"the texts' {sorted(IMAGE_CHECK_INPUTS - {'pixel_values'})}; drop {other}")
    factors = model.config.factors
    pixels = inputs["pixel_values"]
    moved = act_on_product(factors, pixels)  # [|G|, B, C, H, W]
    scores = _scores(model(**{**inputs, "pixel_values": torch.cat([pixels, moved.flatten(0, 1)])}))
    reference, copies = scores[: len(pixels)].float(), scores[len(pixels):].float().unflatten(0, moved.shape[:2])
    errors = (copies - reference).abs().flatten(1).amax(1)
    return dict(zip(element_names(factors), errors.tolist()))


def _scores(output) -> torch.Tensor:
    """The invariant scores of an image wrapper's output: class logits, or CLIP's logits_per_image."""
    return output.logits if "logits" in output else output.logits_per_image


def _token_errors(model, inputs: dict, tables: list[torch.Tensor]) -> dict[str, float]:
    """{element name: error} for a text wrapper (module docstring)."""
    key = "decoder_input_ids" if model.config.is_encoder_decoder else "input_ids"
    if "input_ids" not in inputs or (model.config.is_encoder_decoder and key not in inputs):
        raise ValueError(f"check_equivariance needs the token ids the group acts on: input_ids"
                         f"{' and decoder_input_ids' if model.config.is_encoder_decoder else ''}")
    errors = {}
    reference = model(**inputs).logits.float().log_softmax(-1)
    for name, permutation in element_permutations(model, tables).items():
        moved = {**inputs, **{k: _act(model, inputs[k], permutation) for k in {"input_ids", key}}}
        output = model(**moved).logits.float().log_softmax(-1)
        back = output.gather(-1, _output_permutation(model, inputs[key], permutation))
        masked = torch.isneginf(reference)
        if not torch.equal(masked, torch.isneginf(back)):
            errors[name] = float("inf")
            continue
        errors[name] = (back - reference).masked_fill(masked, 0).abs().max().item()
    return errors


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
    """The largest equivariance error of `model` (an equivariant wrapper) on `inputs`, for every group element.

    Text wrappers: tokenizer output with `input_ids` (and `decoder_input_ids` for a seq2seq model). Image
    wrappers: `pixel_values` [B, C, H, W] (and, for CLIP, the tokenized texts the images are scored against).
    Returns {element name: error}; raises AssertionError naming the worst element if an error exceeds `atol`.
    """
    if not hasattr(getattr(model, "config", None), "factors"):
        raise TypeError(f"check_equivariance checks an equivariant wrapper (its config names the groups), got a "
                        f"{type(model).__name__}; wrap it with make_equivariant(model, groups=...)")
    tables = [f.output_permutations() for f in model.config.factors]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if all(table is None for table in tables):
                errors = _invariance_errors(model, inputs)
            else:
                errors = _token_errors(model, inputs, tables)
    finally:
        model.train(was_training)
    worst = max(errors, key=errors.get)
    if errors[worst] > atol:
        raise AssertionError(f"not equivariant: element {worst} has error {errors[worst]:.3g} > atol {atol} "
                             f"({sum(e > atol for e in errors.values())} of {len(errors)} elements fail)")
    return errors
