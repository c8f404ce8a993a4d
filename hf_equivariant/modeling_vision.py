"""Vision wrappers: any image classifier, and CLIP or SigLIP, with outputs invariant to a product of image groups.

Each holds the pretrained model as `self.model` (see `modeling_base`). A forward pass makes the copies of the
images that the symmetrisation needs (`image_symmetrize`), runs the distinct ones through the inner model as
one batch and combines their scores:
- `EquivariantModelForImageClassification`: the class logits (any `AutoModelForImageClassification`:
  ViT, ResNet, ConvNeXt, ...);
- `EquivariantCLIPModel`, `EquivariantSiglipModel`: the image-text logits of a CLIP or SigLIP model
  (`logits_per_image`, zero-shot classification), from the inner model's own forward on the copies; the text
  side runs once, unchanged. CLIP's scores are probabilities through a softmax over the texts, SigLIP's
  through a sigmoid per image-text pair (with its learned bias): the averages follow (`image_symmetrize`).
"""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.clip.modeling_clip import CLIPOutput, image_text_contrastive_loss
from transformers.models.siglip.modeling_siglip import SiglipOutput

from .configuration_base import loading_options
from .configuration_vision import EquivariantSiglipConfig, EquivariantVisionConfig
from .image_groups import resolve_image_groups
from .image_symmetrize import combine, distinct_rows, image_copies, image_methods, image_plan
from .methods import DEFAULT_SYMMETRIZATION, ElementPlan
from .modeling_base import HUB_KWARGS, EquivariantBasePreTrainedModel

# The settings EquivariantVisionConfig adds (symmetrization, average, deduplicate, ...): from_pretrained overrides.
CONFIG_OPTIONS = tuple(name for name in EquivariantVisionConfig.wrapper_settings() if name not in ("inner_config",
                                                                                                   "groups"))


class InnerRows:
    """The copies of a batch of images for a copy plan, and the distinct ones to compute.

    `rows` ([U, C, H, W]) go through the inner model; copy k of image b is inner row `inverse[k * B + b]`.
    """

    def __init__(self, pixel_values: torch.Tensor, factors, plan: ElementPlan, deduplicate: bool):
        if pixel_values.dim() != 4:
            raise ValueError(f"expected pixel_values of shape [B, C, H, W], got {tuple(pixel_values.shape)}")
        copies = image_copies(pixel_values, factors, plan)
        if deduplicate:
            self.rows, self.inverse = distinct_rows(copies)
        else:
            self.rows, self.inverse = copies, torch.arange(copies.shape[0], device=copies.device)


def sigmoid_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss of [T, I] image-text logits whose matching pairs are on the diagonal: the mean
    over texts of -sum_i log sigmoid(+-z_ti), + for the matching image (as `SiglipModel.forward` computes it;
    transformers has no function for it)."""
    signs = 2 * torch.eye(logits_per_text.shape[0], device=logits_per_text.device) - 1
    return -torch.nn.functional.logsigmoid(signs * logits_per_text).sum(-1).mean()


class EquivariantVisionPreTrainedModel(EquivariantBasePreTrainedModel):
    """Base class of the image models: symmetrises the image side of `self.model` over `config.factors`."""

    config_class = EquivariantVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    how_to_wrap = "make_equivariant(model, groups=['rot90', 'hflip'])"
    pipeline_tag = None  # the pipeline the model card announces, set by each task subclass
    score_link = "softmax"  # how the inner scores become probabilities (`image_symmetrize.LINKS`)

    def __init__(self, config: EquivariantVisionConfig, model: PreTrainedModel | None = None):
        super().__init__(config, model)
        self.post_init()

    def check_method(self) -> None:
        """The image wrappers give input-dependent weights the copies' scores, not hidden states."""
        if self.copy_weights is not None and self.copy_weights.uses_hidden_states:
            raise ValueError(
                f"symmetrization {self.config.symmetrization!r} weighs copies by the inner model's hidden states, "
                f"which the image wrappers do not provide; choose one of {image_methods()}"
            )

    def _init_weights(self, module):
        """Modules of the inner model missing from a checkpoint are initialised as the inner model would; the
        method's copy weights initialise themselves."""
        if any(module is m for m in self.model.modules()):
            self.model._init_weights(module)

    @property
    def plan(self) -> ElementPlan:
        return image_plan(self.config.symmetrization, [f.order for f in self.config.factors])

    @property
    def num_copies(self) -> int:
        """Copies per image: prod |Gi| for equitune, sum |Gi| for multi_equitune, 1 for canonicalize, ...; fewer
        distinct inner rows when some are equal and `config.deduplicate` is set."""
        return self.plan.num_copies

    def inner_rows(self, pixel_values: torch.Tensor) -> InnerRows:
        return InnerRows(pixel_values, self.config.factors, self.plan, self.config.deduplicate)

    def symmetrised(self, rows: InnerRows, scores: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """The configured method over the inner rows' scores [U, L] -> [B, L]; `pooled`: features averaged with
        the plan's fixed weights."""
        return combine(scores, rows.inverse, self.plan, self.config.average, self.copy_weights, pooled,
                       self.score_link)

    @classmethod
    def from_base_model(cls, model: PreTrainedModel, groups, symmetrization: str = DEFAULT_SYMMETRIZATION,
                        average: str = "probs", **options):
        """Wrap an in-memory model; its weights are shared. `options` are further `EquivariantVisionConfig`
        settings (`method_options`, `deduplicate`)."""
        if isinstance(model, EquivariantBasePreTrainedModel):
            raise ValueError("the model is already invariant; wrap its inner model (`.model`) instead")
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
        config = cls.config_class(
            inner_config=model.config,
            groups=[f.to_dict() for f in resolve_image_groups(groups)],
            symmetrization=symmetrization,
            average=average,
            **{"base_model": model.name_or_path or None, **options},
        )
        return cls(config, model=model)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, groups=None, **kwargs):
        """Load a saved invariant model, or a plain checkpoint made invariant with `groups=[...]`.

        `symmetrization`, `method_options`, `average`, `deduplicate` and `base_model` given as keywords override
        the saved choice (another method does not inherit the saved method's `method_options`:
        `configuration_base.loading_options`); the remaining keywords go to the inner model's loading, as in
        transformers.
        """
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        options = {k: kwargs.pop(k) for k in CONFIG_OPTIONS if k in kwargs}
        if isinstance(config, EquivariantVisionConfig):
            if groups is not None:
                raise ValueError(
                    f"{pretrained_model_name_or_path} is already invariant (groups "
                    f"{[f.name for f in config.factors]}); load it without groups=, or load its base model"
                )
            config = type(config)(**loading_options(config.to_dict(), options)) if options else config
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if groups is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a plain {config.model_type} checkpoint: pass groups=[...] "
                f"(e.g. ['rot90', 'hflip']) to make it invariant"
            )
        model = cls.auto_model_class.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return cls.from_base_model(model, groups, **options)

    def model_card(self, tags: list[str] | None = None, repo_id: str | None = None):
        """The model card (`huggingface_hub.ModelCard`): base model, image groups, method, passes per image."""
        from .modelcard import vision_model_card

        return vision_model_card(self.config, self.pipeline_tag, self.auto_model_class.__name__, self.score_link,
                                 tags=[*(self.model_tags or []), *(tags or [])], repo_id=repo_id)


class EquivariantModelForImageClassification(EquivariantVisionPreTrainedModel):
    """An image classifier whose logits are invariant to the groups: logits(g . x) = logits(x) for every g."""

    auto_model_class = AutoModelForImageClassification
    pipeline_tag = "image-classification"

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        """Symmetrised logits ([B, num_labels]; with average="probs" their softmax is the averaged distribution)
        and, given `labels`, the inner model's loss on them."""
        rows = self.inner_rows(pixel_values)
        logits = self.symmetrised(rows, self.model(pixel_values=rows.rows).logits)
        loss = None if labels is None else self.loss_function(labels, logits, self.model.config)
        return ImageClassifierOutput(loss=loss, logits=logits)


class EquivariantCLIPModel(EquivariantVisionPreTrainedModel):
    """A CLIP model whose image side is invariant: logits_per_image, image_embeds and get_image_features are the
    same for g . x as for x, so zero-shot classification is too. The text side is the inner model's."""

    auto_model_class = AutoModelForZeroShotImageClassification
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    pipeline_tag = "zero-shot-image-classification"
    inner_model_type, family_name = "clip", "CLIP"  # the model type of the inner models it wraps, and their name
    output_class = CLIPOutput
    contrastive_loss = staticmethod(image_text_contrastive_loss)  # of [T, I] logits_per_text

    def check_config(self, config: EquivariantVisionConfig) -> None:
        """Groups, and an inner model of `inner_model_type`."""
        super().check_config(config)
        found = config.inner_config.model_type
        if found != self.inner_model_type:
            wrapper = IMAGE_TEXT_WRAPPERS.get(found)
            if wrapper is not None:
                hint = f"wrap it with {wrapper.__name__}, or with make_equivariant"
            elif found == "siglip2":
                hint = ("SigLIP 2 takes images as sequences of patches of varying number (pixel_values [B, patches, "
                        "C*P*P] with pixel_attention_mask and spatial_shapes), on which the image groups, acting on "
                        "[B, C, H, W] pixels, are not defined")
            else:
                hint = f"image-text models supported: {', '.join(IMAGE_TEXT_WRAPPERS)}"
            raise ValueError(f"{type(self).__name__} wraps {self.family_name} models, got a {found} model: {hint}")

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None) -> BaseModelOutputWithPooling:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                            position_ids=position_ids)

    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        """pooler_output: the inner model's image features averaged over the copies with the plan's fixed weights
        (input-dependent weights such as equizero's need texts to score the copies), an invariant embedding."""
        rows = self.inner_rows(pixel_values)
        features = self.model.get_image_features(pixel_values=rows.rows).pooler_output
        return BaseModelOutputWithPooling(pooler_output=self.symmetrised(rows, features, pooled=True))

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                return_loss: bool | None = None):
        """As the inner model's forward; logits_per_image ([B images, T texts]) are the symmetrised image-text
        logits of the inner model's forward on the copies (for CLIP with average="probs": the log of the
        copies' mean softmax over the texts; for SigLIP: the logit of the copies' mean sigmoid probability).
        image_embeds: the copies' normalised embeddings averaged with the plan's fixed weights, normalised.
        The loss (`return_loss`) is the inner model's kind (CLIP's contrastive, SigLIP's sigmoid) of the
        symmetrised logits."""
        rows = self.inner_rows(pixel_values)
        inner = self.model(input_ids=input_ids, pixel_values=rows.rows, attention_mask=attention_mask,
                           position_ids=position_ids)
        logits_per_image = self.symmetrised(rows, inner.logits_per_image)
        image = self.symmetrised(rows, inner.image_embeds, pooled=True)
        logits_per_text = logits_per_image.t()
        return self.output_class(
            loss=self.contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=inner.text_embeds,
            image_embeds=image / image.norm(p=2, dim=-1, keepdim=True),
        )


class EquivariantSiglipModel(EquivariantCLIPModel):
    """A SigLIP model whose image side is invariant (as `EquivariantCLIPModel`). SigLIP scores each image-text pair
    on its own, sigmoid(z) with z = exp(scale) cos + bias: with average="probs", sigmoid(logits_per_image) is the
    mean of the copies' probabilities. SigLIP 2 is not supported (its images are patch sequences)."""

    config_class = EquivariantSiglipConfig
    inner_model_type, family_name = "siglip", "SigLIP"
    score_link = "sigmoid"
    output_class = SiglipOutput
    contrastive_loss = staticmethod(sigmoid_loss)


# The image-text wrappers by the model type of the model they wrap (`make_equivariant` picks from it).
IMAGE_TEXT_WRAPPERS = {cls.inner_model_type: cls for cls in (EquivariantCLIPModel, EquivariantSiglipModel)}
