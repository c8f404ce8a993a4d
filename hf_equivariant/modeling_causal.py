"""Equivariant causal language models: any `AutoModelForCausalLM` symmetrised over word-swap groups.

forward(x) = combine_k( M(copy_k(x)) ): the K copies of the batch (K*B rows, copy-major) run through
the inner model M as one batch, one row per distinct copy, then untransform and average (see
`symmetrize`). In generation every new token is transformed like the prompt, so each copy extends its
own transformed history; the inner KV cache holds one row per distinct history. With the word action
(`boundaries`) the group touches whole words only, and pieces that would glue onto a swapped word are
masked.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from .modeling_equivariant import EquivariantPreTrainedModel


class EquivariantModelForCausalLM(EquivariantPreTrainedModel, GenerationMixin):
    """A causal LM that is exactly equivariant to a product of word-swap groups.

    ```python
    model = EquivariantModelForCausalLM.from_pretrained("gpt2", groups=[presets.GENDER, presets.RACE])
    model.generate(**tok("The Black man worked as", return_tensors="pt"), max_new_tokens=20)
    ```
    """

    auto_model_class = AutoModelForCausalLM

    def __init__(self, config, model=None):
        super().__init__(config, model)
        self.loss_type = "ForCausalLM"  # subclass names need not end in ForCausalLM (Trainer reads this)

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        preceding_token_ids=None,
        history_ids=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Symmetrised logits [B, T, V]; with `labels`, the cross-entropy of the symmetrised distribution.

        `preceding_token_ids` ([B]): the token before input_ids[:, 0] when `cache` holds the past (the word
        action needs it; generate() passes it). `history_ids` ([B, T_past + T]): every token so far, when
        `cache` holds the past and the method canonicalises (generate() passes it).
        """
        self.refuse_embeddings(inputs_embeds=inputs_embeds)
        if input_ids is None:
            raise ValueError("pass input_ids")
        if torch.is_tensor(logits_to_keep) or logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        per_row = dict(attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        out = self.symmetrised_forward(input_ids, per_row, labels=labels, cache=cache, use_cache=use_cache,
                                       preceding_token_ids=preceding_token_ids, history_ids=history_ids)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, cache=out.inner.cache,
                                      hidden_states=out.inner.get("hidden_states"),
                                      attentions=out.inner.get("attentions"))

    def copy_inputs(self, copies, context):
        return {"input_ids": copies}

    def symmetrised_loss(self, logits, labels, num_items_in_batch=None):
        return self.loss_function(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)


class EquiGPT2LMHeadModel(EquivariantModelForCausalLM):
    """`EquivariantModelForCausalLM` restricted to a GPT-2 inner model."""

    def __init__(self, config, model=None):
        if config.text_config.model_type != "gpt2":
            raise ValueError(
                f"EquiGPT2LMHeadModel wraps GPT-2, got a {config.text_config.model_type!r} model; "
                f"use EquivariantModelForCausalLM"
            )
        super().__init__(config, model)
