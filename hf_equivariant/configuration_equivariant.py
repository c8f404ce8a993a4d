"""Configuration of an equivariant language model: the inner model's config plus the resolved word-swap groups."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .boundaries import ACTIONS, decode_boundaries
from .configuration_base import EquivariantBaseConfig
from .groups import TokenSwapGroup, resolve_groups
from .symmetrize import AVERAGES


@strict
class EquivariantConfig(EquivariantBaseConfig):
    """Config of a language model symmetrised over a product of word-swap groups.

    Args (besides `EquivariantBaseConfig`'s: symmetrization, method_options, deduplicate, base_model):
        text_config: the inner (base) model's config, nested; any causal or seq2seq LM.
        groups: the factors, each a resolved `TokenSwapGroup.to_dict()` (words, token orbits,
            vocabulary size), so a saved model needs no tokenizer to rebuild its group.
        average: what the copies' outputs average: "log_probs", "logits" or "probs".
        action: "word" (the group swaps whole words only, never the pieces of a longer word; see
            `boundaries`) or "token" (every occurrence of a support token). Configs saved before the word
            action existed load as "token".
        token_boundaries: the tokenizer's word boundaries for the word action (`boundaries.encode_boundaries`:
            per token, whether a word may end before it and begin after it, or that every token is a word,
            as with word-level tokenizers); None for the token action.
        deduplicate: run the inner model once per distinct copy (exact; copies of an input that are
            equal token for token share an inner row and, in generation, a KV-cache row).
        max_inner_rows: at most this many inner rows per inner call in passes that use no KV cache
            (use_cache=False; by default passes with labels or in train mode), to bound memory; None for no cap.
    """

    model_type = "hf_equivariant"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}
    inner_config_field = "text_config"
    averages = AVERAGES

    text_config: PreTrainedConfig | dict | None = None
    average: str = "log_probs"
    action: str = "word"
    token_boundaries: dict | None = None
    max_inner_rows: int | None = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}, choose one of {ACTIONS}")
        super().__post_init__(**kwargs)
        self.is_encoder_decoder = bool(self.text_config.is_encoder_decoder)
        vocab_size = self.text_config.get_text_config(decoder=True).vocab_size
        if self.groups:
            resolve_groups(self.groups, vocab_size=vocab_size)
        decode_boundaries(self.token_boundaries, vocab_size)  # checks that they fit the vocabulary

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """A saved config; one saved before the word action existed has no `action`: its groups acted on tokens."""
        if "groups" in config_dict and "action" not in config_dict:
            config_dict = {**config_dict, "action": "token"}
        return super().from_dict(config_dict, **kwargs)

    @property
    def factors(self) -> list[TokenSwapGroup]:
        return [TokenSwapGroup.from_dict(g) for g in self.groups or []]
