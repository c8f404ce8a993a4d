"""hf-equivariant: exactly equivariant HuggingFace models: language models over products of word-swap groups,
image classifiers, CLIP and SigLIP over rotations and mirror images."""

from . import lambda_equitune, presets  # noqa: F401 (lambda_equitune registers its methods)
from .check import check_equivariance
from .configuration_base import EquivariantBaseConfig
from .configuration_equivariant import EquivariantConfig
from .configuration_vision import EquivariantSiglipConfig, EquivariantVisionConfig
from .groups import TokenSwapGroup, WordSwapGroup, resolve_groups
from .image_groups import ImageGroup
from .modeling_base import EquivariantBasePreTrainedModel
from .modeling_causal import EquiGPT2LMHeadModel, EquivariantModelForCausalLM
from .modeling_equivariant import EquivariantPreTrainedModel
from .modeling_seq2seq import EquivariantModelForSeq2SeqLM
from .modeling_vision import EquivariantCLIPModel, EquivariantModelForImageClassification, EquivariantSiglipModel
from .symmetry import SymmetryGroup
from .wrap import make_equivariant, register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "EquiGPT2LMHeadModel",
    "EquivariantBaseConfig",
    "EquivariantBasePreTrainedModel",
    "EquivariantCLIPModel",
    "EquivariantConfig",
    "EquivariantModelForCausalLM",
    "EquivariantModelForImageClassification",
    "EquivariantModelForSeq2SeqLM",
    "EquivariantPreTrainedModel",
    "EquivariantSiglipConfig",
    "EquivariantSiglipModel",
    "EquivariantVisionConfig",
    "ImageGroup",
    "SymmetryGroup",
    "TokenSwapGroup",
    "check_equivariance",
    "WordSwapGroup",
    "make_equivariant",
    "presets",
    "register_auto_classes",
    "resolve_groups",
]
