"""The machinery every equivariant language model shares: the copy plan, word boundaries, generation, loading.

A wrapper (an `EquivariantBasePreTrainedModel`, see `modeling_base`) holds any pretrained LM as `self.model` and
the copy plan of its group (see `symmetrize`)
with the tokenizer's word boundaries (see `boundaries`) as non-persistent buffers, rebuilt from the
config whenever the model is built or loaded. Task subclasses (causal, seq2seq) only say how ids enter
the copies and how outputs leave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from . import boundaries
from .configuration_base import loading_options
from .configuration_equivariant import EquivariantConfig
from .groups import resolve_groups
from .methods import DEFAULT_SYMMETRIZATION, CopyScores, branch_scale
from .modeling_base import HUB_KWARGS, EquivariantBasePreTrainedModel
from .rows import CacheRows, CopyRows, expand_rows, holds_past
from .symmetrize import CopyPlan, Pool, class_keys, frame, plan_copies, support_lookup, transform_ids

PLAN_BUFFERS = ("plan_support", "plan_lookup", "plan_input_maps", "plan_weights", "plan_mixing", "plan_branches",
                "plan_class_keys", "plan_before", "plan_after")
FLOAT_PLAN_BUFFERS = ("plan_weights", "plan_mixing")  # float32 whatever the model's dtype
# Per-layer outputs of the inner model, returned for one copy of each input row (see symmetrised_forward).
LAYER_OUTPUTS = ("hidden_states", "attentions", "decoder_hidden_states", "decoder_attentions", "cross_attentions")
UNBATCHED = frozenset({"cache_position", "logits_to_keep"})  # tensors over positions, whatever their length
# The settings EquivariantConfig adds (symmetrization, average, deduplicate, ...): from_pretrained overrides.
# `action` has its own argument (changing it may need the tokenizer); `token_boundaries` follows from it.
CONFIG_OPTIONS = tuple(name for name in EquivariantConfig.wrapper_settings()
                       if name not in ("text_config", "groups", "action", "token_boundaries"))
# Token ids generate() uses as they are (starts, stops, pads or forces with them), never as g·id.
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                     "forced_eos_token_id")


def word_action(factors, tokenizer, vocab_size: int, action: str):
    """(factors, token boundaries for the config) of `action`: for "word", the tokenizer's word boundaries,
    and the factors without the forms that would begin or end words differently (see `boundaries`)."""
    if action not in boundaries.ACTIONS:
        raise ValueError(f"unknown action {action!r}, choose one of {boundaries.ACTIONS}")
    if action == "token":
        return factors, None
    if tokenizer is None:
        raise ValueError(
            'action="word" swaps whole words and reads where words begin and end from the tokenizer: pass '
            'tokenizer=..., or action="token" to swap the group tokens wherever they occur'
        )
    found = boundaries.token_boundaries(tokenizer, vocab_size)
    factors = boundaries.word_forms_only(factors, found, describe=lambda t: tokenizer.decode([t]))
    return factors, boundaries.encode_boundaries(found, vocab_size)


@dataclass
class Symmetrised:
    """What `symmetrised_forward` gives a task: the symmetrised logits [B, ..., V], their loss (with labels),
    and the last inner output, whose cache holds the pasts of the inner rows that compute the copy rows
    (`assign_rows_and_reorder_cache`) and whose per-layer outputs are those of copy 0 of each input row."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    inner: ModelOutput


def batch_rows(value, index: torch.Tensor, batch_size: int):
    """`value` with every part shaped like the batch taken at rows `index` (an index over the B input rows).

    A tensor whose first dimension is B (a 2-D or 4-D attention mask, position or token-type ids) becomes
    `value[index]`; dicts (a mask per layer type, keyword arguments), tuples and lists are mapped
    recursively, except the `UNBATCHED` keys of a dict; anything else (caches, flags) is returned as it is.
    """
    if isinstance(value, torch.Tensor):
        return value[index] if value.dim() > 0 and value.shape[0] == batch_size else value
    if isinstance(value, dict):
        return {k: v if k in UNBATCHED else batch_rows(v, index, batch_size) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(batch_rows(v, index, batch_size) for v in value)
    return value


class EquivariantPreTrainedModel(EquivariantBasePreTrainedModel):
    """Base class of the language models: wraps `self.model` (built by `auto_model_class`) and holds the copy plan."""

    config_class = EquivariantConfig
    how_to_wrap = "make_equivariant(model, groups, tokenizer)"

    def __init__(self, config: EquivariantConfig, model: PreTrainedModel | None = None):
        super().__init__(config, model)
        if model is not None:  # a pretrained model generates with its own settings
            self.generation_config = model.generation_config
        self.cache_rows = CacheRows()  # the copy rows of the KV caches this model fills
        self._refuse_moved_special_tokens()
        device = self.model.get_input_embeddings().weight.device  # where input ids go (a GPU model's plan too)
        for name, tensor in self._plan_tensors().items():
            self.register_buffer(name, tensor.to(device), persistent=False)
        self.post_init()

    def check_config(self, config: EquivariantConfig) -> None:
        """Groups, and the word boundaries the word action needs."""
        super().check_config(config)
        if config.action == "word" and config.token_boundaries is None:
            raise ValueError(
                'the config asks for action="word" but holds no word boundaries (they come from the tokenizer): '
                f'load it with {type(self).__name__}.from_pretrained(path, action="word", tokenizer=...) (the Auto '
                'classes do not pass the tokenizer on), or use action="token"'
            )

    def _refuse_moved_special_tokens(self):
        """Refuse a group that moves a special token (`SPECIAL_TOKEN_IDS`: bos, eos, pad, decoder start, forced
        bos/eos) of the inner config or generation config.

        generate() starts with, stops at, pads or forces these ids as they are, never as g·id, so with
        such a token in an orbit M(g·x) = g·M(x) would fail for generated sequences.
        """
        sources = (self.model.config, self.model.generation_config, self.generation_config)
        for source in filter(None, sources):
            self._refuse_moved_ids({name: getattr(source, name, None) for name in SPECIAL_TOKEN_IDS},
                                   f"{type(source).__name__}.")

    def _refuse_moved_ids(self, values: dict, where: str) -> None:
        """Raise if a token id of `values` ({name: id or list of ids}, read from `where`) is moved by a group."""
        moved = {t: (f, c, orbit) for f in self.config.factors for orbit in f.orbits for c, t in enumerate(orbit)}
        for name, value in values.items():
            for token in value if isinstance(value, (list, tuple)) else [value]:
                if token in moved:
                    group, c, orbit = moved[token]
                    raise ValueError(
                        f"{where}{name} = {value!r} holds token {token}, which group {group.name!r} moves (orbit "
                        f"{list(orbit)}; the token is a form of a word of class {c}, {list(group.classes[c])}): "
                        f"generation uses it unmoved, so the model would not be equivariant; take its word out of "
                        f"the group or use another {name}"
                    )

    def _plan_tensors(self) -> dict[str, torch.Tensor]:
        vocab_size = self.config.text_config.get_text_config(decoder=True).vocab_size
        with torch.device("cpu"):  # from_pretrained builds the model under a meta-device context
            plan = plan_copies(self.config.factors, self.config.symmetrization)
            lookup = support_lookup(plan.support, vocab_size)
            before, after = boundaries.decode_boundaries(self.config.token_boundaries, vocab_size)
        keys = class_keys(self.config.factors, vocab_size)
        tensors = (plan.support, lookup, plan.input_maps, plan.weights, plan.mixing, plan.branches, keys, before, after)
        return dict(zip(PLAN_BUFFERS, tensors))

    def _init_weights(self, module):
        # The plan buffers are not saved; from_pretrained leaves them empty and relies on this to refill them.
        # A method's own parameters (its copy weights) that the checkpoint lacks start as the method says; the
        # wrapper does it (called last, after its submodules), since transformers skips modules without parameters
        # of their own in remote code. `reset_parameters` uses transformers.initialization: loaded ones stay.
        if module is self:
            for name, tensor in self._plan_tensors().items():
                init.copy_(getattr(self, name), tensor)
            if self.copy_weights is not None:
                self.copy_weights.reset_parameters()

    def _apply(self, fn, recurse=True):
        """Behind .to(), .half(), .bfloat16(), .double(), .cuda(): the plan moves with the model, but its float
        tensors (plan_weights, plan_mixing) keep float32, the precision `combine` computes in."""
        plan = {name: self._buffers[name] for name in FLOAT_PLAN_BUFFERS if name in self._buffers}
        super()._apply(fn, recurse)
        for name, before in plan.items():
            after = self._buffers[name]
            self._buffers[name] = after if after.dtype == before.dtype else before.to(after.device)
        return self

    @property
    def plan(self) -> CopyPlan:
        return CopyPlan(self.plan_support, self.plan_input_maps, self.plan_weights, self.plan_mixing,
                        self.plan_branches)

    @property
    def num_copies(self) -> int:
        """Inner rows per input row (the method's copies: prod |Gi| for equitune, sum |Gi| for multi_equitune)."""
        return self.plan_input_maps.shape[0]

    @property
    def acts_on_words(self) -> bool:
        """Whether the group acts on whole words only (`config.action == "word"` with a sub-word tokenizer);
        otherwise on every support token wherever it occurs."""
        return self.config.action == "word" and not boundaries.every_token_is_a_word(self.config.token_boundaries)

    def word_occurrences(self, ids: torch.Tensor, preceding_token_ids: torch.Tensor | None = None,
                         following_token_ids: torch.Tensor | None = None):
        """[B, T] bool: where the support tokens of `ids` are whole words (see `boundaries`); None for the
        token action. `preceding_token_ids` ([B]): the token before ids[:, 0] when a KV cache holds the past;
        `following_token_ids` ([B]): the token known to follow the last one (a seq2seq label)."""
        if not self.acts_on_words:
            return None
        return boundaries.word_occurrences(ids, self.plan_before, self.plan_after, preceding_token_ids,
                                           following_token_ids)

    def check_preceding_token_ids(self, preceding_token_ids, cache) -> None:
        """With the word action, a step that continues a cached sequence must say which token precedes it."""
        if preceding_token_ids is None and self.acts_on_words and cache is not None and holds_past(cache):
            raise ValueError(
                "this model swaps whole words: when continuing from a cache, pass preceding_token_ids (the last "
                "token of each row so far) so that it can tell whether the new tokens begin a word; generate() "
                "passes it (except with prefill_chunk_size, which the word action does not support)"
            )

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`. It refuses special token ids (`SPECIAL_TOKEN_IDS`, given as keywords or
        in a `generation_config`) that a group moves, as wrapping does for the model's own. With the word
        action it refuses the modes that score tokens it has not generated itself (an assistant's or
        prompt-lookup candidates, prefill chunks): they would be read with the next token in view and
        escape the glue mask."""
        config = kwargs.get("generation_config") or self.generation_config
        self._refuse_moved_ids({name: getattr(config, name, None) for name in SPECIAL_TOKEN_IDS},
                               f"generate(): {type(config).__name__}.")
        self._refuse_moved_ids({name: kwargs[name] for name in SPECIAL_TOKEN_IDS if name in kwargs}, "generate(): ")
        if self.acts_on_words:
            refused = [name for name in ("assistant_model", "prompt_lookup_num_tokens", "prefill_chunk_size")
                       if kwargs.get(name) is not None or getattr(config, name, None) is not None]
            if refused:
                raise ValueError(f"{', '.join(refused)}: not supported with the word action; use the usual decoding "
                                 f"(greedy, sampling, beam search), or action=\"token\"")
        return super().generate(*args, **kwargs)

    def transform_ids(self, ids: torch.Tensor, occurrences: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] -> [K*B, T]: every copy of every row, copy-major; only `occurrences` are acted on if given."""
        return transform_ids(ids, self.plan_lookup, self.plan_input_maps, occurrences)

    def assign_rows_and_reorder_cache(self, keys: torch.Tensor, batch_size: int, cache=None) -> CopyRows:
        """The inner rows that compute the K*B copy rows, whose new tokens `keys` ([K*B, L]) describe, and
        `cache` reordered to hold their pasts (see `rows.CacheRows`). With `config.deduplicate`, copies with
        equal histories share an inner row and a cache row; compileable (static) caches keep all K*B rows,
        except for a canonicalising method (`keeps_canonical_rows`).
        """
        if self.keeps_canonical_rows(cache):
            return CopyRows.canonical(self.num_copies, batch_size, keys.device)
        if not self.deduplicates(cache):
            return CopyRows.every(self.num_copies, batch_size, keys.device)
        return self.cache_rows.assign_rows_and_reorder_cache(keys, self.num_copies, batch_size, cache)

    def deduplicates(self, cache=None) -> bool:
        """Whether copies share inner rows: `config.deduplicate`, except with compileable (static) caches (where a
        canonicalising method still runs one row per input: `keeps_canonical_rows`)."""
        return self.config.deduplicate and not (cache is not None and cache.is_compileable)

    def keeps_canonical_rows(self, cache=None) -> bool:
        """Whether a canonicalising method runs one row per input where deduplication cannot (a compileable
        cache, with `config.deduplicate`): the copy rows of an input all hold its canonical copy, and the
        canonical rows never fork."""
        return self.method.canonicalizes and self.config.deduplicate and not self.deduplicates(cache)

    def resolve_use_cache(self, use_cache: bool | None, labels=None) -> bool:
        """`use_cache`, by default `config.use_cache` except in training passes (labels given, or the inner model in
        train mode): these return no KV cache, so that `config.max_inner_rows` splits their inner rows."""
        if use_cache is not None:
            return use_cache
        return bool(self.config.use_cache) and labels is None and not self.model.training

    def inner_blocks(self, num_rows: int, uses_cache: bool) -> list[slice]:
        """Blocks of inner rows per inner call: at most `config.max_inner_rows` unless a KV cache is used."""
        cap = self.config.max_inner_rows
        if not cap or uses_cache:
            return [slice(0, num_rows)]
        return [slice(start, min(start + cap, num_rows)) for start in range(0, num_rows, cap)]

    def copy_inputs(self, copies: torch.Tensor, context: torch.Tensor | None) -> dict:
        """How some copy rows enter the inner model: their ids ([n, T]) and, where the task has one, their
        `context` ([n, ...]; see `symmetrised_forward`). Each task subclass says it."""
        raise NotImplementedError(f"{type(self).__name__} does not say how copies enter its inner model")

    def symmetrised_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """The task's loss of the symmetrised logits. Each task subclass says it."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its loss is computed")

    @staticmethod
    def refuse_embeddings(**embeddings) -> None:
        """The group acts on token ids: refuse embeddings given in their place."""
        given = [name for name, value in embeddings.items() if value is not None]
        if given:
            raise ValueError(f"the group acts on token ids: pass ids, not {', '.join(given)}")

    def symmetrised_forward(self, ids: torch.Tensor, per_row: dict, *, labels=None, cache=None, use_cache=None,
                            preceding_token_ids=None, following_token_ids=None, history_ids=None,
                            context: torch.Tensor | None = None,
                            context_copies: torch.Tensor | None = None) -> Symmetrised:
        """The forward pass of every task: transform -> distinct rows -> inner calls -> combine.

        - `ids` [B, T]: the ids the group acts on and whose next-token scores are computed (the decoder's
          for seq2seq); `labels`: their targets, for the loss.
        - `per_row`: the inner model's other keyword arguments (masks, position ids, ...); tensors shaped
          like the batch are taken at each inner row's input row (`batch_rows`).
        - `context` [K*B, ...]: per copy row, what enters the inner model with its ids (the encoder output
          of every copy), or None. A fresh history starts with it: copies share an inner row only where
          their context rows are equal too.
        - `preceding_token_ids` ([B]): the token before ids[:, 0] when `cache` holds the past (the word
          action needs it); `following_token_ids` ([B]): the token known to follow the last one.
        - `history_ids` ([B, T_past + T]): every token of each row so far, `ids` last, when `cache` holds the
          past and the method canonicalises (the frame depends on the whole prefix).
        - `context_copies` [K*B, S]: for a canonicalising method with a context, the ids each copy's context
          was computed from (the encoder ids g_k . x of every copy): the frame at a position is that of the
          context's ids followed by the history up to there (see `symmetrize.frame`), since the output there
          depends on both. `context` must then be the canonical copy's for every copy row.

        Copies run through the inner model one block of distinct rows at a time (`inner_blocks`); the
        method's fixed weights combine each block as it comes. A method with input-dependent weights
        (`methods.CopyWeights`) sees the logits of every distinct row (their log-probabilities when it reads
        them; their last hidden state when it asks), and its `scale` (the weights normalised per branch, unless
        the method says otherwise) scales the plan's.
        Per-layer outputs (`LAYER_OUTPUTS`, when asked for) are those of copy 0 of each input row, B rows:
        the input itself for equitune and for one factor; for multi_equitune with several factors the
        input with every factor but the first canonicalised. They are not symmetrised.
        """
        per_row = dict(per_row)
        per_row.pop("return_dict", None)
        num_items_in_batch = per_row.pop("num_items_in_batch", None)
        logits_to_keep = per_row.get("logits_to_keep", 0)
        use_cache = self.resolve_use_cache(use_cache, labels)
        self.check_preceding_token_ids(preceding_token_ids, cache)
        batch_size = ids.shape[0]
        occurrences = self.word_occurrences(ids, preceding_token_ids, following_token_ids)
        copies = self.transform_ids(ids, occurrences)
        in_frame = None
        if self.method.canonicalizes:  # every copy row runs the row's canonical copy; the frame weighs the reads
            if history_ids is None:
                if cache is not None and holds_past(cache):
                    raise ValueError(f"symmetrization={self.config.symmetrization!r} depends on the whole prefix: when "
                                     f"continuing from a cache, pass history_ids (every token of each row so far, the "
                                     f"new ones last); generate() passes it")
                history_ids, history_copies = ids, copies
            else:
                history_copies = self.transform_ids(history_ids, self.word_occurrences(history_ids))
            canonical, in_frame = frame(history_copies, self.plan_class_keys, batch_size, context_copies)
            copies, in_frame = canonical[:, -ids.shape[1]:], in_frame[..., -ids.shape[1]:]
        keys = copies
        if context is not None and self.deduplicates(cache) and self.cache_rows.of(cache) is None:
            context_rows = torch.unique(context.flatten(1), dim=0, return_inverse=True)[1]
            keys = torch.cat([context_rows[:, None], copies], dim=1)
        rows = self.assign_rows_and_reorder_cache(keys, batch_size, cache)

        kept = logits_to_keep if torch.is_tensor(logits_to_keep) else slice(-logits_to_keep or None, None)
        weigh = self.copy_weights
        if weigh is not None and weigh.uses_hidden_states:
            per_row["output_hidden_states"] = True
        scale = None if in_frame is None else branch_scale(in_frame[:, :, kept].float(), self.plan_branches)
        pool = Pool(self.plan, rows, self.config.average, scale) if weigh is None else None
        held_logits, held_hidden, layers = [], [], []
        for block in self.inner_blocks(rows.num_rows, use_cache or cache is not None):
            inner_rows = rows.representatives[block]
            inner = self.model(
                **self.copy_inputs(copies[inner_rows], None if context is None else context[inner_rows]),
                cache=cache,
                use_cache=use_cache,
                return_dict=True,
                **batch_rows(per_row, rows.owners[block], batch_size),
            )
            layers.append({name: inner[name] for name in LAYER_OUTPUTS if inner.get(name) is not None})
            if pool is not None:
                pool.add(inner.logits)
                continue
            held_logits.append(inner.logits)
            if weigh.uses_hidden_states:
                last_hidden = inner.get("decoder_hidden_states") or inner.hidden_states
                held_hidden.append(last_hidden[-1][:, kept])
        if pool is None:
            scores = CopyScores(held_logits[0] if len(held_logits) == 1 else torch.cat(held_logits),
                                torch.cat(held_hidden) if held_hidden else None, rows.inverse, self.plan_branches)
            pool = Pool(self.plan, rows, self.config.average, weigh.scale(scores))
            for logits in held_logits:
                pool.add(logits)

        acted = glued = None
        if occurrences is not None:
            ids, occurrences = ids[:, kept], occurrences[:, kept]  # only the positions whose scores are kept
            acted = boundaries.acted_columns(ids, self.plan_before, self.plan_after, self.plan_support)
            glued = boundaries.glue_positions(ids, occurrences, self.plan_lookup)
        logits = pool.result(acted)
        if glued is not None:
            logits = boundaries.mask_glued(logits, glued, self.plan_before)
        copy_zero = rows.inverse[:batch_size]  # the inner row of copy 0 of each input row
        for name in layers[0]:
            inner[name] = tuple(torch.cat(layer)[copy_zero] for layer in zip(*(block[name] for block in layers)))
        if inner.cache is not None:
            self.cache_rows.record(inner.cache, rows if self.deduplicates(inner.cache) else None)
        loss = None if labels is None else self.symmetrised_loss(logits, labels, num_items_in_batch)
        return Symmetrised(logits, loss, inner)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        """The inner model's own preparation of a decoding step, on the B input rows; `forward` maps them to copies.

        The inner model knows what its forward needs (Mamba drops the padding mask on cached steps, Phi-3
        restarts its cache past its original context, Bloom keeps a 2-D mask with static caches, ...). It
        sees the same cache object, which it only queries (length) or drops.
        With the word action it adds the token before the new ones (`preceding_token_ids`) once a cache holds
        the past: whether a new token begins a word depends on it. A canonicalising method gets the whole
        history (`history_ids`): the frame depends on it.
        """
        inputs = self.model.prepare_inputs_for_generation(input_ids, **kwargs)
        new = inputs["decoder_input_ids" if self.config.is_encoder_decoder else "input_ids"]
        if self.acts_on_words and new is not None and input_ids.shape[1] > new.shape[1]:
            inputs["preceding_token_ids"] = input_ids[:, -new.shape[1] - 1]
        if self.method.canonicalizes:
            inputs["history_ids"] = input_ids
        return inputs

    def _validate_model_kwargs(self, model_kwargs: dict):
        """generate() accepts what the inner model accepts (`token_type_ids`, ...): its preparation takes them."""
        self.model._validate_model_kwargs(model_kwargs)

    def _reorder_cache(self, cache, beam_idx: torch.Tensor):
        """Beam search reorders B rows: the copy rows follow, and the cache keeps the rows still used."""
        index = expand_rows(beam_idx, self.num_copies, beam_idx.shape[0])
        if self.deduplicates(cache):
            self.cache_rows.reorder_for_beams(cache, index)
        else:  # one cache row per copy row, or per input row (`keeps_canonical_rows`)
            cache.reorder_cache(beam_idx if self.keeps_canonical_rows(cache) else index)
        return cache

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """The inner model's `resize_token_embeddings`; then the groups (their `vocab_size` in the config) and
        the copy plan follow the new vocabulary, whose added tokens no group moves. Refuses a size that
        would drop a token the groups move."""
        last = int(self.plan_support.max())
        if new_num_tokens is not None:
            multiple = pad_to_multiple_of or 1
            size = -(-new_num_tokens // multiple) * multiple
            if size <= last:
                raise ValueError(
                    f"cannot resize the vocabulary to {size} tokens: the groups "
                    f"{[f.name for f in self.config.factors]} move token {last}; keep at least {last + 1} tokens"
                )
        embeddings = self.model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        vocab_size = self.config.text_config.get_text_config(decoder=True).vocab_size
        self.config.groups = [{**group, "vocab_size": vocab_size} for group in self.config.groups]
        self.config.token_boundaries = boundaries.resize_boundaries(self.config.token_boundaries, vocab_size)
        for name, tensor in self._plan_tensors().items():
            self.register_buffer(name, tensor.to(self.plan_lookup.device), persistent=False)
        return embeddings

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.model.set_output_embeddings(value)

    @classmethod
    def from_base_model(
        cls,
        model: PreTrainedModel,
        groups,
        tokenizer=None,
        symmetrization: str = DEFAULT_SYMMETRIZATION,
        average: str = "log_probs",
        action: str = "word",
        **options,
    ):
        """Wrap an in-memory model; word groups are resolved with `tokenizer`. The model's weights are shared.

        `action="word"` (default) swaps whole words only and reads the word boundaries from `tokenizer`;
        `action="token"` swaps every occurrence of a group token, also inside longer words. `options` are
        further `EquivariantConfig` settings (`deduplicate`, `max_inner_rows`, ...).
        """
        if isinstance(model, EquivariantPreTrainedModel):
            raise ValueError("the model is already equivariant; wrap its inner model (`.model`) instead")
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
        vocab_size = model.config.get_text_config(decoder=True).vocab_size
        factors = resolve_groups(groups, tokenizer, vocab_size=vocab_size)
        factors, token_boundaries = word_action(factors, tokenizer, vocab_size, action)
        config = EquivariantConfig(
            text_config=model.config,
            groups=[f.to_dict() for f in factors],
            symmetrization=symmetrization,
            average=average,
            action=action,
            token_boundaries=token_boundaries,
            **{"base_model": model.name_or_path or None, **options},
        )
        return cls(config, model=model)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        groups=None,
        tokenizer=None,
        symmetrization: str | None = None,
        average: str | None = None,
        action: str | None = None,
        **kwargs,
    ):
        """Load a saved equivariant model, or a plain base checkpoint made equivariant with `groups=`.

        For a base checkpoint the tokenizer that resolves word groups (and, for `action="word"`, gives the
        word boundaries) is loaded from the same place unless `tokenizer` is given. `symmetrization`,
        `average`, `action` and the other `EquivariantConfig` settings given as keywords
        (`deduplicate=False`, `max_inner_rows=...`) override the saved choice (another method does not inherit
        the saved method's `method_options`: `configuration_base.loading_options`, but a saved lambda head loads
        into either lambda method, whose heads have the same parameters); turning a saved token action
        into the word action reads the word boundaries from `tokenizer` (or the checkpoint's own
        tokenizer). The remaining keywords go to the inner model's loading, as in transformers.
        """
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        options = {k: kwargs.pop(k) for k in CONFIG_OPTIONS if k in kwargs}
        options.update((k, v) for k, v in (("symmetrization", symmetrization), ("average", average)) if v is not None)
        if config.model_type == EquivariantConfig.model_type:  # (remote code loads its own copy of the class)
            if groups is not None:
                raise ValueError(
                    f"{pretrained_model_name_or_path} is already equivariant (groups "
                    f"{[f.name for f in config.factors]}); load it without groups=, or load its base model"
                )
            if action is not None and action != config.action:
                if action == "word":
                    tokenizer = tokenizer or AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
                vocab_size = config.text_config.get_text_config(decoder=True).vocab_size
                factors, options["token_boundaries"] = word_action(config.factors, tokenizer, vocab_size, action)
                options.update(action=action, groups=[f.to_dict() for f in factors])
            config = EquivariantConfig(**loading_options(config.to_dict(), options)) if options else config
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
            # the saved generation config is read after __init__ checked the special tokens: check it too
            (loaded[0] if isinstance(loaded, tuple) else loaded)._refuse_moved_special_tokens()
            return loaded
        if groups is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a plain {config.model_type} checkpoint: pass groups=[...] "
                f"to make it equivariant"
            )
        model = cls.auto_model_class.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        needs_words = action in (None, "word") or not all(hasattr(g, "orbits") or isinstance(g, dict) for g in groups)
        if tokenizer is None and needs_words:
            tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if action is not None:
            options["action"] = action
        return cls.from_base_model(model, groups, tokenizer, **options)

    def model_card(self, tags: list[str] | None = None, repo_id: str | None = None):
        """The model card (`huggingface_hub.ModelCard`) describing base model, groups and symmetrisation."""
        from .modelcard import equivariant_model_card

        return equivariant_model_card(self.config, tags=[*(self.model_tags or []), *(tags or [])], repo_id=repo_id)
