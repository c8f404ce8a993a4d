"""Entry points that choose the wrapper for a model, and the Auto-class registration."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
)

from .configuration_equivariant import EquivariantConfig
from .configuration_vision import EquivariantSiglipConfig, EquivariantVisionConfig
from .methods import DEFAULT_SYMMETRIZATION
from .modeling_causal import EquivariantModelForCausalLM
from .modeling_seq2seq import EquivariantModelForSeq2SeqLM
from .modeling_vision import (
    IMAGE_TEXT_WRAPPERS,
    EquivariantCLIPModel,
    EquivariantModelForImageClassification,
    EquivariantSiglipModel,
)


def make_equivariant(
    model: PreTrainedModel,
    groups,
    tokenizer=None,
    symmetrization: str = DEFAULT_SYMMETRIZATION,
    average: str | None = None,
    action: str = "word",
    **options,
):
    """Wrap an in-memory model so that it is exactly equivariant to the product of `groups`.

    A causal or seq2seq LM takes word-swap groups; an image classifier, a CLIP or a SigLIP model takes image groups
    (`ImageGroup`s or kind names such as "rot90", "hflip"), and its image side becomes invariant; its
    `average` defaults to "probs" (the language models' to "log_probs").

    `groups` are `WordSwapGroup`s (resolved with `tokenizer`) or already resolved `TokenSwapGroup`s.
    `action="word"` swaps whole words only (the tokenizer says where words begin and end),
    `action="token"` every occurrence of a group token. The wrapper shares the model's weights and leaves
    them untouched. `symmetrization` names a registered method (`methods.register_symmetrization`);
    `options` are further `EquivariantConfig` (or `EquivariantVisionConfig`) settings (`deduplicate`,
    `method_options`, ...).
    """
    model = inner_transformers_model(model)
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        wrapper = IMAGE_TEXT_WRAPPERS.get(model.config.model_type, EquivariantCLIPModel)  # which refuses others
        return wrapper.from_base_model(model, groups, symmetrization, average or "probs", **options)
    if getattr(model, "main_input_name", None) == "pixel_values":
        return EquivariantModelForImageClassification.from_base_model(model, groups, symmetrization, average or "probs",
                                                                      **options)
    wrapper = EquivariantModelForSeq2SeqLM if model.config.is_encoder_decoder else EquivariantModelForCausalLM
    return wrapper.from_base_model(model, groups, tokenizer, symmetrization, average or "log_probs", action, **options)


def inner_transformers_model(model) -> PreTrainedModel:
    """`model` itself, or the transformers model inside a peft `PeftModel`; refuses anything else.

    `make_equivariant(peft_model, ...)` thus wraps the peft model's transformers model with the adapter's layers
    in place: the wrapper computes M = base + adapter on every copy, and peft's switches (`disable_adapter`,
    `set_adapter`, `merge_and_unload`) act through it.
    """
    if isinstance(model, PreTrainedModel):
        return model
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.get_base_model()
    raise TypeError(
        f"make_equivariant wraps a transformers PreTrainedModel or a peft PeftModel, got {type(model).__name__}; "
        f"load the model with AutoModelForCausalLM / AutoModelForSeq2SeqLM.from_pretrained"
    )


def register_auto_classes() -> None:
    """Make `AutoConfig` and the Auto model classes (causal and seq2seq LMs, image classification, zero-shot image
    classification) load saved equivariant models."""
    AutoConfig.register(EquivariantConfig.model_type, EquivariantConfig, exist_ok=True)
    AutoConfig.register(EquivariantVisionConfig.model_type, EquivariantVisionConfig, exist_ok=True)
    AutoConfig.register(EquivariantSiglipConfig.model_type, EquivariantSiglipConfig, exist_ok=True)
    AutoModelForImageClassification.register(EquivariantVisionConfig, EquivariantModelForImageClassification,
                                             exist_ok=True)
    AutoModelForZeroShotImageClassification.register(EquivariantVisionConfig, EquivariantCLIPModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(EquivariantSiglipConfig, EquivariantSiglipModel, exist_ok=True)
    AutoModelForCausalLM.register(EquivariantConfig, EquivariantModelForCausalLM, exist_ok=True)
    AutoModelForSeq2SeqLM.register(EquivariantConfig, EquivariantModelForSeq2SeqLM, exist_ok=True)
