"""Configuration of a vision model made invariant to a product of image groups: the inner config plus the groups."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .image_groups import ImageGroup, resolve_image_groups
from .image_symmetrize import check_method


@strict
class EquivariantVisionConfig(PreTrainedConfig):
    """Config of an image classifier or CLIP model whose image side is symmetrised over image groups.

    Args:
        inner_config: the inner model's config, nested (a ViT, ResNet, ConvNeXt, ... classifier, or CLIP).
        groups: the factors, each an `ImageGroup.to_dict()` ({"name": ..., "kind": "rot90"|"rot180"|"hflip"|"vflip"}).
        symmetrization: "multi_equitune" (sum |Gi| inner passes), "equitune" (prod |Gi|), "equizero"
            (prod |Gi|, the copy of least proxy loss) or "multi_equizero" (sum |Gi|); see `image_groups`.
        average: what the copies' scores average: "probs" (the paper's CLIP code), "log_probs" or "logits".
        equizero_loss: equizero's proxy loss, "entropy" or "max_prob" (minus the top-1 probability).
        deduplicate: run equal copies (an image fixed by some element) through the inner model once. Exact.
        base_model: name or path of the checkpoint the model was built from (for the model card).
    """

    model_type = "hf_equivariant_vision"
    sub_configs_defaults = {"inner_config": SubConfigSpec(config_class=AutoConfig, model_type="vit")}

    inner_config: PreTrainedConfig | dict | None = None
    groups: list | None = None
    symmetrization: str = "multi_equitune"
    average: str = "probs"
    equizero_loss: str = "entropy"
    deduplicate: bool = True
    base_model: str | None = None

    def __post_init__(self, **kwargs):
        check_method(self.symmetrization, self.average, self.equizero_loss)
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
