"""Equivariant sequence-to-sequence models: any `AutoModelForSeq2SeqLM` symmetrised over word-swap groups.

The group acts on the encoder ids, the decoder ids and the output scores. Copy k of a pair (x, y) is
(a_k(x), a_k(y)): the encoder runs once per distinct copy of x and its outputs cover all K*B copy rows
(also in generate(), whose single encoder call goes through `get_encoder()`); the decoder extends each
copy's own transformed history, one inner row per distinct (encoder output, decoder history), and the
copies' scores combine as in the causal model. With the word action (`boundaries`) the group touches
whole words only, in the encoder's and the decoder's ids.

A canonicalising method (`canonicalize`) reads the pair as one sequence x ++ y: the decoder's scores at
position t depend on x and y<=t, so there y_t = mean over the frame F(x ++ y<=t) of g^-1 . M(g.x, g.y<=t)_t,
with the frame of `symmetrize.frame` (the elements sending x ++ y<=t to its least class sequence). As
g ranges over F(h.x ++ h.y<=t) = F(x ++ y<=t) . h^-1 for any element h, y(h.x, h.y)_t = h . y(x, y)_t: exact;
the elements the sequence leaves open (its stabiliser) are averaged over. Since x comes first, every element
of the frame sends x to its canonical form c(x): the encoder runs once per input, on c(x). The frame only
shrinks as t grows, and the least copy of the whole pair is canonical at every position, so the decoder runs
once per input too, on that copy (in generation, the shared row's cache stays valid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationMixin
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils.deprecation import deprecate_kwarg

from .modeling_equivariant import EquivariantPreTrainedModel, batch_rows
from .symmetrize import frame


@dataclass
class CopiesEncoderOutput(BaseModelOutput):
    """The encoder's output for every copy row ([K*B, S, H], copy-major), and `input_copies` ([K*B, S] long):
    the ids of every copy, g_k . x, that a canonicalising method's decoder reads its frame from."""

    input_copies: torch.Tensor | None = None


class CopiesEncoder(nn.Module):
    """The inner encoder applied to every copy of the input: B rows in, K*B rows out (copy-major),
    computed once per distinct copy. For a canonicalising method every copy row gets the encoding of the
    row's canonical copy c(x) (see the module docstring): one distinct copy per input. Hidden states and
    attentions, when asked for, are those of copy 0 (B rows; see `EquivariantPreTrainedModel.symmetrised_forward`).

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
        encoded_copies = copies
        if wrapper.method.canonicalizes:
            encoded_copies = frame(copies, wrapper.plan_class_keys, input_ids.shape[0])[0]
        rows = wrapper.assign_rows_and_reorder_cache(encoded_copies, input_ids.shape[0])
        encoded = wrapper.model.get_encoder()(
            input_ids=encoded_copies[rows.representatives],
            attention_mask=batch_rows(attention_mask, rows.owners, input_ids.shape[0]),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        copy_zero = rows.inverse[: input_ids.shape[0]]  # per-layer outputs: copy 0 of each row, as in the decoder
        return CopiesEncoderOutput(last_hidden_state=encoded.last_hidden_state[rows.inverse],
                                   hidden_states=_rows(encoded.hidden_states, copy_zero),
                                   attentions=_rows(encoded.attentions, copy_zero), input_copies=copies)


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
        history_ids=None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Symmetrised decoder logits [B, T, V]; with `labels`, the cross-entropy of the symmetrised distribution.

        `preceding_token_ids` ([B]): the decoder token before decoder_input_ids[:, 0] when `cache` holds the
        past (the word action needs it; generate() passes it). `history_ids` ([B, T_past + T]): every decoder
        token so far, when `cache` holds the past and the method canonicalises (generate() passes it).
        """
        self.refuse_embeddings(inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or encoder_outputs of every copy)")
            encoder_outputs = self.get_encoder()(input_ids, attention_mask, kwargs.get("output_attentions"),
                                                 kwargs.get("output_hidden_states"))
        context_copies = getattr(encoder_outputs, "input_copies", None)
        if self.method.canonicalizes and context_copies is None:
            raise ValueError(f"symmetrization={self.config.symmetrization!r} reads the encoder ids of every copy: pass "
                             f"input_ids, or encoder_outputs from this model's get_encoder()")
        out = self.symmetrised_forward(
            decoder_input_ids,
            dict(attention_mask=attention_mask, decoder_attention_mask=decoder_attention_mask, **kwargs),
            labels=labels, cache=cache, use_cache=use_cache, preceding_token_ids=preceding_token_ids,
            following_token_ids=None if labels is None else labels[:, -1],  # the label after the last decoder input
            history_ids=history_ids,
            context=encoder_outputs[0],  # [K*B, S, H]
            context_copies=context_copies,
        )
        return Seq2SeqLMOutput(
            loss=out.loss, logits=out.logits, cache=out.inner.cache,
            decoder_hidden_states=out.inner.get("decoder_hidden_states"),
            decoder_attentions=out.inner.get("decoder_attentions"), cross_attentions=out.inner.get("cross_attentions"),
            encoder_hidden_states=getattr(encoder_outputs, "hidden_states", None),
            encoder_attentions=getattr(encoder_outputs, "attentions", None),
        )

    def copy_inputs(self, copies, context):
        return {"decoder_input_ids": copies, "encoder_outputs": BaseModelOutput(last_hidden_state=context)}

    def symmetrised_loss(self, logits, labels, num_items_in_batch=None):
        return fixed_cross_entropy(logits.flatten(0, 1), labels.flatten().to(logits.device), num_items_in_batch)
