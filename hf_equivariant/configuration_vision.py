"""Configuration of a vision model made invariant to a product of image groups: the inner config plus the groups."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_base import EquivariantBaseConfig
from .image_groups import ImageGroup, resolve_image_groups
from .image_symmetrize import AVERAGES


@strict
class EquivariantVisionConfig(EquivariantBaseConfig):
    """Config of an image classifier or CLIP model whose image side is symmetrised over image groups.

    Args (besides `EquivariantBaseConfig`'s: method_options, deduplicate, base_model):
        inner_config: the inner model's config, nested (a ViT, ResNet, ConvNeXt, ... classifier, CLIP or SigLIP).
        groups: the factors, each an `ImageGroup.to_dict()` ({"name": ..., "kind": "rot90"|"rot180"|"hflip"|"vflip"}).
        symmetrization: the name of a registered method: "multi_equitune" (sum |Gi| inner passes), "equitune"
            (prod |Gi|), ...; see `image_symmetrize` for how its copies are made of images.
        average: what the copies' scores average: "probs" (the paper's CLIP code), "log_probs" or "logits".
    """

    model_type = "hf_equivariant_vision"
    sub_configs_defaults = {"inner_config": SubConfigSpec(config_class=AutoConfig, model_type="vit")}
    inner_config_field = "inner_config"
    averages = AVERAGES

    inner_config: PreTrainedConfig | dict | None = None
    average: str = "probs"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
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


@strict
class EquivariantSiglipConfig(EquivariantVisionConfig):
    """Config of a SigLIP model whose image side is symmetrised over image groups (`EquivariantSiglipModel`).

    The fields are `EquivariantVisionConfig`'s; `average` applies to SigLIP's per-pair sigmoid probabilities
    (see `image_symmetrize`). Its own model type, which contains "siglip", is what transformers'
    zero-shot-image-classification pipeline reads to score each label with a sigmoid (not a softmax over the
    labels) and to pad the texts to 64 tokens, as SigLIP was trained.
    """

    model_type = "hf_equivariant_siglip"
