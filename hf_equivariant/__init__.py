"""hf-equivariant: exactly equivariant HuggingFace language models over products of word-swap groups."""

from . import lambda_equitune, presets  # noqa: F401 (lambda_equitune registers its methods)
from .check import check_equivariance
from .configuration_equivariant import EquivariantConfig
from .groups import TokenSwapGroup, WordSwapGroup, resolve_groups
from .modeling_causal import EquiGPT2LMHeadModel, EquivariantModelForCausalLM
from .modeling_equivariant import EquivariantPreTrainedModel
from .modeling_seq2seq import EquivariantModelForSeq2SeqLM
from .wrap import make_equivariant, register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = [
    "EquiGPT2LMHeadModel",
    "EquivariantConfig",
    "EquivariantModelForCausalLM",
    "EquivariantModelForSeq2SeqLM",
    "EquivariantPreTrainedModel",
    "TokenSwapGroup",
    "check_equivariance",
    "WordSwapGroup",
    "make_equivariant",
    "presets",
    "register_auto_classes",
    "resolve_groups",
]
