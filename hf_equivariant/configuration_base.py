"""The configuration both wrapper families share: the inner model's config, the groups and the symmetrisation.

`EquivariantConfig` (language models, word-swap groups) and `EquivariantVisionConfig` (image models, image
groups) derive from `EquivariantBaseConfig`. Each family names the field that nests the inner model's config
(`inner_config_field`: "text_config" or "inner_config", the key config.json has always used) and the averages
its outputs support; the settings common to both live here, with the same names and meaning in config.json.
"""

from __future__ import annotations

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .methods import DEFAULT_SYMMETRIZATION, SYMMETRIZATIONS, get_symmetrization


@strict
class EquivariantBaseConfig(PreTrainedConfig):
    """Config of a pretrained model symmetrised over a product of groups G1 x ... x GN.

    Args:
        groups: the factors, each its group's `to_dict()` (the family's group class rebuilds it with `from_dict`).
        symmetrization: the name of a registered method (`methods.register_symmetrization`): "multi_equitune"
            (sum |Gi| inner passes per input), "equitune" (prod |Gi|), ...
        method_options: keyword arguments of the method's copy weights (equizero's `proxy_loss`, ...).
        average: what the copies' outputs average (one of the family's `averages`).
        base_model: name or path of the checkpoint the model was built from (for the model card).
        deduplicate: run the inner model once per distinct copy of an input (exact: an input fixed by some
            element has equal copies).
    """

    inner_config_field = ""  # the field nesting the inner model's config, named by each family
    averages = ()  # the values `average` may take in the family

    groups: list | None = None
    symmetrization: str = DEFAULT_SYMMETRIZATION
    method_options: dict | None = None
    average: str = "log_probs"
    base_model: str | None = None
    deduplicate: bool = True

    def __post_init__(self, **kwargs):
        get_symmetrization(self.symmetrization)  # refuses an unknown name, listing the registered ones
        if self.average not in self.averages:
            raise ValueError(f"unknown average {self.average!r}, choose one of {self.averages}")
        # The base class sets the attention implementation recursively (None unless asked for): keep the inner one.
        inner_attn = getattr(self.inner_model_config, "_attn_implementation", None)
        asked = "attn_implementation" in kwargs
        super().__post_init__(**kwargs)
        if not asked:
            self.inner_model_config._attn_implementation = inner_attn

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """A saved config, with the settings given as keywords (`loading_options`); options of its method that it
        lacks mean what they meant when it was saved (the method's `saved_options`: an option whose default
        changed after configs without it were written)."""
        method = config_dict.get("symmetrization")
        if kwargs.get("symmetrization", method) != method:
            config_dict = loading_options(config_dict, {k: kwargs[k] for k in METHOD_SETTINGS if k in kwargs})
        elif "groups" in config_dict and method in SYMMETRIZATIONS and SYMMETRIZATIONS[method].saved_options:
            options = {**SYMMETRIZATIONS[method].saved_options, **(config_dict.get("method_options") or {})}
            config_dict = {**config_dict, "method_options": options}
        return super().from_dict(config_dict, **kwargs)

    @property
    def inner_model_config(self) -> PreTrainedConfig:
        """The inner model's config (the family's `inner_config_field`)."""
        return getattr(self, self.inner_config_field)

    @classmethod
    def wrapper_settings(cls) -> tuple[str, ...]:
        """The names of the fields this config adds to `PreTrainedConfig`'s (the inner config, the groups, ...)."""
        own = {field.name for field in dataclasses.fields(PreTrainedConfig)}
        return tuple(field.name for field in dataclasses.fields(cls) if field.name not in own)


METHOD_SETTINGS = ("symmetrization", "method_options")


def loading_options(saved: dict, options: dict) -> dict:
    """A saved config's dict with the settings given on loading. `method_options` belong to their method: a
    `symmetrization` that names another method drops the saved ones, so the new method gets the `method_options`
    given with it, else its defaults."""
    if options.get("symmetrization", saved.get("symmetrization")) != saved.get("symmetrization"):
        saved = {**saved, "method_options": None}
    return {**saved, **options}
