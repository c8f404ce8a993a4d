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

from .modeling_equivariant import EquivariantPreTrainedModel, batch_rows


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
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Symmetrised logits [B, T, V]; with `labels`, the cross-entropy of the symmetrised distribution.

        `preceding_token_ids` ([B]): the token before input_ids[:, 0] when `cache` holds the past (the word
        action needs it; generate() passes it).
        """
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("the group acts on token ids: pass input_ids, not inputs_embeds")
        kwargs.pop("return_dict", None)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if torch.is_tensor(logits_to_keep) or logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        use_cache = self.resolve_use_cache(use_cache, labels)
        self.check_preceding_token_ids(preceding_token_ids, cache)
        occurrences = self.word_occurrences(input_ids, preceding_token_ids)
        copies = self.transform_ids(input_ids, occurrences)
        rows = self.assign_rows_and_reorder_cache(copies, input_ids.shape[0], cache)
        per_row = dict(attention_mask=attention_mask, position_ids=position_ids, **kwargs)

        def run_inner(block):
            return self.model(
                input_ids=copies[rows.representatives[block]],
                cache=cache,
                use_cache=use_cache,
                return_dict=True,
                **batch_rows(per_row, rows.owners[block], input_ids.shape[0]),
            )

        logits, outputs = self.symmetrised_logits(run_inner, rows, use_cache or cache is not None, input_ids,
                                                  occurrences, logits_to_keep)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.get("hidden_states"), attentions=outputs.get("attentions"))


class EquiGPT2LMHeadModel(EquivariantModelForCausalLM):
    """`EquivariantModelForCausalLM` restricted to a GPT-2 inner model."""

    def __init__(self, config, model=None):
        if config.text_config.model_type != "gpt2":
            raise ValueError(
                f"EquiGPT2LMHeadModel wraps GPT-2, got a {config.text_config.model_type!r} model; "
                f"use EquivariantModelForCausalLM"
            )
        super().__init__(config, model)
