"""Entry points that choose the wrapper for a model, and the Auto-class registration."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .configuration_equivariant import EquivariantConfig
from .modeling_causal import EquivariantModelForCausalLM


def make_equivariant(
    model: PreTrainedModel,
    groups,
    tokenizer=None,
    symmetrization: str = "multi_equitune",
    average: str = "log_probs",
):
    """Wrap an in-memory causal LM so that it is exactly equivariant to the product of `groups`.

    `groups` are `WordSwapGroup`s (resolved with `tokenizer`) or already resolved `TokenSwapGroup`s.
    The wrapper shares the model's weights and leaves them untouched.
    """
    if model.config.is_encoder_decoder:
        raise NotImplementedError("encoder-decoder models are not supported yet; wrap a causal LM")
    return EquivariantModelForCausalLM.from_base_model(model, groups, tokenizer, symmetrization, average)


def register_auto_classes() -> None:
    """Make `AutoConfig` and `AutoModelForCausalLM` load saved equivariant models."""
    AutoConfig.register(EquivariantConfig.model_type, EquivariantConfig, exist_ok=True)
    AutoModelForCausalLM.register(EquivariantConfig, EquivariantModelForCausalLM, exist_ok=True)
