"""The base class both wrapper families share: the inner model, the method's copy weights, the model card.

`EquivariantPreTrainedModel` (language models, `modeling_equivariant`) and `EquivariantVisionPreTrainedModel`
(image models, `modeling_vision`) derive from `EquivariantBasePreTrainedModel`. It holds a pretrained model as
`self.model` (built by the family's `auto_model_class` or adopted intact), refuses a config without groups,
builds the registered method's input-dependent copy weights, and writes the family's model card on
`save_pretrained` and `push_to_hub`, merged into a card the user wrote (locally or on the Hub).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile

from transformers import PreTrainedModel

from .configuration_base import EquivariantBaseConfig
from .methods import get_symmetrization

HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
    "gguf_file",
)


class EquivariantBasePreTrainedModel(PreTrainedModel):
    """Base class: wraps `self.model` (built by `auto_model_class`) and symmetrises it over `config.factors`."""

    config_class = EquivariantBaseConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    auto_model_class = None  # the Auto class of the inner model, set by each task subclass
    how_to_wrap = "make_equivariant(model, groups)"  # named by the no-groups error

    def __init__(self, config: EquivariantBaseConfig, model: PreTrainedModel | None = None):
        self.check_config(config)
        super().__init__(config)
        inner_config = config.inner_model_config
        if model is None:
            model = self.auto_model_class.from_config(inner_config)
        else:
            # A pretrained model must come out intact: keep post_init() from initialising it again.
            for part in itertools.chain(model.modules(), model.parameters(), model.buffers()):
                part._is_hf_initialized = True
        inner_config._attn_implementation = model.config._attn_implementation
        model.config = inner_config
        self.model = model
        # the method's input-dependent copy weights (a module: its parameters, if any, are the wrapper's own), built
        # with its default options, which the config records (a saved model keeps them if a default changes)
        method = self.method
        config.method_options = {**method.options, **(config.method_options or {})} or None
        self.copy_weights = method.weights(config, **(config.method_options or {})) if method.weights else None
        self.check_method()

    def check_config(self, config: EquivariantBaseConfig) -> None:
        """Refuse a config the family cannot build a model from (here: one without groups)."""
        if not config.groups:
            raise ValueError(
                f"the config has no groups (groups={config.groups!r}): an equivariant model needs at least one; "
                f"build it with {self.how_to_wrap} or from_pretrained(base, groups=[...])"
            )

    def check_method(self) -> None:
        """Refuse a method the family cannot run (called once `self.copy_weights` is built); each family says."""

    @property
    def method(self):
        """The registered `methods.SymmetrizationMethod` of `config.symmetrization`."""
        return get_symmetrization(self.config.symmetrization)

    @property
    def inner_passes(self) -> int:
        """Inner rows per input row (per token in generation), as printed and reported: the method's count
        (`SymmetrizationMethod.inner_passes`: one for a canonicalising method, whose copy rows read its canonical
        row) with `config.deduplicate`, else one per copy (`num_copies`)."""
        if not self.config.deduplicate:
            return self.num_copies
        return self.method.inner_passes([factor.order for factor in self.config.factors])

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: the wrapper initialises with `transformers.initialization` and ties parameters only, as the library's
        models do. (transformers passes a custom-code flag down to the inner model on load, whose `_init_weights`
        is then skipped for modules without parameters of their own, leaving the non-persistent buffers they fill,
        like FalconH1's `mup_vector`, uninitialised.)"""
        return False

    def model_card(self, tags: list[str] | None = None, repo_id: str | None = None):
        """The model card (`huggingface_hub.ModelCard`) of the family: base model, groups, method and its cost."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its model card is written")

    def save_pretrained(self, save_directory, is_main_process: bool = True, push_to_hub: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus a README.md model card describing the groups.

        A README.md the user wrote in `save_directory` is kept: the groups section is merged into it.
        """
        from .modelcard import save_model_card, templates_shipped

        hub_options = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "create_pr", "private") if k in kwargs}
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process and templates_shipped():  # the templates ship with the library, not with remote code
            save_model_card(self.model_card(), os.path.join(save_directory, "README.md"))
        if push_to_hub and is_main_process:
            repo_id = hub_options.pop("repo_id", os.path.basename(os.path.abspath(save_directory)))
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_options)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ) -> str:
        """Upload the model with its model card.

        Same arguments as `PreTrainedModel.push_to_hub`, whose generic card would replace ours. A README.md
        the user has on the Hub (at `revision`) is kept, with the groups section merged into it, as
        `save_pretrained` does with a local one.
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError, RevisionNotFoundError
        from transformers.utils.hub import hf_api

        from .modelcard import save_model_card

        repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp_dir:
            self.save_pretrained(tmp_dir, max_shard_size=max_shard_size)
            readme = os.path.join(tmp_dir, "README.md")
            try:  # the card on the Hub, if there is one, takes the place of the one save_pretrained wrote
                shutil.copy(hf_hub_download(repo_id, "README.md", revision=revision, token=token), readme)
            except (RemoteEntryNotFoundError, RevisionNotFoundError):
                pass
            save_model_card(self.model_card(tags, repo_id=repo_id), readme)
            return self._upload_modified_files(
                tmp_dir,
                repo_id,
                files_timestamps={},
                commit_message=commit_message or "Upload equivariant model",
                token=token,
                create_pr=create_pr,
                revision=revision,
                commit_description=commit_description,
            )
