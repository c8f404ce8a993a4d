"""Equivariant sequence-to-sequence models: any `AutoModelForSeq2SeqLM` symmetrised over word-swap groups.

The group acts on the encoder ids, the decoder ids and the output scores. Copy k of a pair (x, y) is
(a_k(x), a_k(y)): the encoder runs once per distinct copy of x and its outputs cover all K*B copy rows
(also in generate(), whose single encoder call goes through `get_encoder()`); the decoder extends each
copy's own transformed history, one inner row per distinct (encoder output, decoder history), and the
copies' scores combine as in the causal model. With the word action (`boundaries`) the group touches
whole words only, in the encoder's and the decoder's ids.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationMixin
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils.deprecation import deprecate_kwarg

from .modeling_equivariant import EquivariantPreTrainedModel, batch_rows


class CopiesEncoder(nn.Module):
    """The inner encoder applied to every copy of the input: B rows in, K*B rows out (copy-major),
    computed once per distinct copy. Hidden states and attentions, when asked for, are those of copy 0
    (B rows; see `EquivariantPreTrainedModel.symmetrised_logits`).

    Its signature is explicit (no **kwargs): generate() passes an encoder only the arguments it names,
    which keeps `labels` and other decoder inputs away from it.
    """

    def __init__(self, wrapper: EquivariantModelForSeq2SeqLM):
        super().__init__()
        self.wrapper = wrapper

    def forward(self, input_ids, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=True):
        wrapper = self.wrapper
        copies = wrapper.transform_ids(input_ids, wrapper.word_occurrences(input_ids))
        rows = wrapper.assign_rows_and_reorder_cache(copies, input_ids.shape[0])
        encoded = wrapper.model.get_encoder()(
            input_ids=copies[rows.representatives],
            attention_mask=batch_rows(attention_mask, rows.owners, input_ids.shape[0]),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        copy_zero = rows.inverse[: input_ids.shape[0]]  # per-layer outputs: copy 0 of each row, as in the decoder
        return BaseModelOutput(last_hidden_state=encoded.last_hidden_state[rows.inverse],
                               hidden_states=_rows(encoded.hidden_states, copy_zero),
                               attentions=_rows(encoded.attentions, copy_zero))


def _rows(layers, index):
    """Rows `index` of each tensor of a tuple (hidden states, attentions), or None."""
    return None if layers is None else tuple(layer[index] for layer in layers)


class EquivariantModelForSeq2SeqLM(EquivariantPreTrainedModel, GenerationMixin):
    """A seq2seq LM (T5, BART, ...) that is exactly equivariant to a product of word-swap groups.

    ```python
    model = make_equivariant(t5_model, [presets.SCAN_VERBS], tokenizer=tok)
    model.generate(**tok(["jump twice"], return_tensors="pt"))
    ```
    """

    auto_model_class = AutoModelForSeq2SeqLM

    def get_encoder(self, modality=None):
        return CopiesEncoder(self)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self.model.prepare_decoder_input_ids_from_labels(labels=labels)

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        preceding_token_ids=None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Symmetrised decoder logits [B, T, V]; with `labels`, the cross-entropy of the symmetrised distribution.

        `preceding_token_ids` ([B]): the decoder token before decoder_input_ids[:, 0] when `cache` holds the
        past (the word action needs it; generate() passes it).
        """
        if inputs_embeds is not None or decoder_inputs_embeds is not None:
            raise ValueError("the group acts on token ids: pass input_ids and decoder_input_ids, not embeddings")
        kwargs.pop("return_dict", None)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or encoder_outputs of every copy)")
            encoder_outputs = self.get_encoder()(input_ids, attention_mask, kwargs.get("output_attentions"),
                                                 kwargs.get("output_hidden_states"))
        hidden = encoder_outputs[0]  # [K*B, S, H]
        use_cache = self.resolve_use_cache(use_cache, labels)
        self.check_preceding_token_ids(preceding_token_ids, cache)
        following = None if labels is None else labels[:, -1]  # the label after the last decoder input
        occurrences = self.word_occurrences(decoder_input_ids, preceding_token_ids, following)
        decoder_copies = self.transform_ids(decoder_input_ids, occurrences)
        keys = decoder_copies
        if self.deduplicates(cache) and self.cache_rows.of(cache) is None:
            # a fresh history starts with the encoder output: equal encoder copies are equal rows of it
            encoded_as = torch.unique(hidden.flatten(1), dim=0, return_inverse=True)[1]
            keys = torch.cat([encoded_as[:, None], decoder_copies], dim=1)
        rows = self.assign_rows_and_reorder_cache(keys, decoder_input_ids.shape[0], cache)
        per_row = dict(attention_mask=attention_mask, decoder_attention_mask=decoder_attention_mask, **kwargs)

        def run_inner(block):
            inner_rows = rows.representatives[block]
            return self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden[inner_rows]),
                decoder_input_ids=decoder_copies[inner_rows],
                cache=cache,
                use_cache=use_cache,
                return_dict=True,
                **batch_rows(per_row, rows.owners[block], decoder_input_ids.shape[0]),
            )

        logits, outputs = self.symmetrised_logits(run_inner, rows, use_cache or cache is not None, decoder_input_ids,
                                                  occurrences, kwargs.get("logits_to_keep", 0))
        loss = None
        if labels is not None:
            loss = fixed_cross_entropy(logits.flatten(0, 1), labels.flatten().to(logits.device), num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, decoder_hidden_states=outputs.get("decoder_hidden_states"),
            decoder_attentions=outputs.get("decoder_attentions"), cross_attentions=outputs.get("cross_attentions"),
            encoder_hidden_states=getattr(encoder_outputs, "hidden_states", None),
            encoder_attentions=getattr(encoder_outputs, "attentions", None),
        )
