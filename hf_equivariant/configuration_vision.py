"""Configuration of a vision model made invariant to a product of image groups: the inner config plus the groups."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .image_groups import ImageGroup, resolve_image_groups
from .image_symmetrize import AVERAGES
from .methods import DEFAULT_SYMMETRIZATION, get_symmetrization


@strict
class EquivariantVisionConfig(PreTrainedConfig):
    """Config of an image classifier or CLIP model whose image side is symmetrised over image groups.

    Args:
        inner_config: the inner model's config, nested (a ViT, ResNet, ConvNeXt, ... classifier, or CLIP).
        groups: the factors, each an `ImageGroup.to_dict()` ({"name": ..., "kind": "rot90"|"rot180"|"hflip"|"vflip"}).
        symmetrization: the name of a registered method (`methods.register_symmetrization`): "multi_equitune"
            (sum |Gi| inner passes), "equitune" (prod |Gi|), ...; see `image_symmetrize` for how its copies
            are made of images.
        method_options: keyword arguments of the method's copy weights (equizero's `proxy_loss`, ...).
        average: what the copies' scores average: "probs" (the paper's CLIP code), "log_probs" or "logits".
        deduplicate: run equal copies (an image fixed by some element) through the inner model once. Exact.
        base_model: name or path of the checkpoint the model was built from (for the model card).
    """

    model_type = "hf_equivariant_vision"
    sub_configs_defaults = {"inner_config": SubConfigSpec(config_class=AutoConfig, model_type="vit")}

    inner_config: PreTrainedConfig | dict | None = None
    groups: list | None = None
    symmetrization: str = DEFAULT_SYMMETRIZATION
    method_options: dict | None = None
    average: str = "probs"
    deduplicate: bool = True
    base_model: str | None = None

    def __post_init__(self, **kwargs):
        get_symmetrization(self.symmetrization)  # refuses an unknown name, listing the registered ones
        if self.average not in AVERAGES:
            raise ValueError(f"unknown average {self.average!r}, choose one of {AVERAGES}")
        # The base class sets the attention implementation recursively (None unless asked for): keep the inner one.
        inner_attn = getattr(self.inner_config, "_attn_implementation", None)
        asked = "attn_implementation" in kwargs
        super().__post_init__(**kwargs)
        if not asked:
            self.inner_config._attn_implementation = inner_attn
        if self.groups:
            self.groups = [f.to_dict() for f in resolve_image_groups(self.groups)]
        # Pipelines read the labels from the outer config.
        if getattr(self.inner_config, "id2label", None):
            self.id2label = dict(self.inner_config.id2label)
            self.label2id = {label: i for i, label in self.id2label.items()}
        problem = getattr(self.inner_config, "problem_type", None)
        if problem in ("regression", "multi_label_classification") and self.average != "logits":
            raise ValueError(
                f"the inner model's problem_type is {problem!r}: its scores are not a softmax distribution, so "
                f"average={self.average!r} does not apply; use average='logits'"
            )

    @property
    def factors(self) -> list[ImageGroup]:
        return [ImageGroup.from_dict(g) for g in self.groups or []]
