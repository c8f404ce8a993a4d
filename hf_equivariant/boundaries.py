"""Word boundaries: the group acts on whole words, never on the pieces of a longer word.

With a sub-word tokenizer a support token (" he", "son", " Black") can also be the first or last piece of
another word (" he"+"ather", "Jack"+"son", " Black"+"stone"). Two properties of every token id v, read
from its text as the tokenizer decodes it inside a sequence, tell the cases apart:

  before[v]   a word boundary lies before v: its text begins with a non-word character, or v is special
  after[v]    a word boundary lies after v:  its text ends with a non-word character, or v is special

Word characters are letters, digits, combining marks and U+FFFD (a partial UTF-8 byte of a byte-level
tokenizer, which may be part of a letter); whitespace, punctuation, symbols and control characters are not.

A support token x_t is a *word occurrence* when the word it spells begins and ends at t:

  begins(t) = before[x_t]  or  t is the first position  or  after[x_{t-1}]
  ends(t)   = t is the last position  or  before[x_{t+1}]

- Inputs: the group acts on word occurrences only; other support tokens stay as they are in every copy.
  The last position counts as ending a word; in generation the glue mask below makes that true.
- Outputs: the scores at position t are those of the token x_{t+1}. The group permutes the columns of the
  support tokens that would begin a word there: s with before[s], and every s when after[x_t].
- Glue mask: after a word occurrence at t, the tokens v that would continue the word (not before[v]) get
  the score -inf, so that a swapped word is never glued to a suffix.

Exactness: the forms of an orbit agree on before and after (`word_forms_only` drops those that do not), and
g moves support tokens only, which are words; so occurrences, acted columns and glue masks are the same for
x and g·x. The word action is therefore a group action on sequences, the output action at each position is
a group action on the vocabulary, and the symmetrised model is exactly equivariant to them.

A word-level tokenizer writes every token with a boundary before it: every support token is then a word
occurrence everywhere, and the word action equals the token action. `token_boundaries` returns None there,
and the config records that every token is a word.
"""

from __future__ import annotations

import base64
import dataclasses
import unicodedata
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .groups import TokenSwapGroup

ACTIONS = ("word", "token")


def is_boundary_character(character: str) -> bool:
    """Not a word character (see the module docstring)."""
    return not (character.isalnum() or character == "\ufffd" or unicodedata.category(character)[0] == "M")


def token_texts(tokenizer, vocab_size: int) -> list[str]:
    """The text of every token id as it reads after another token (a sequence's first token may lose its
    leading space in decoding, so each token is decoded after an anchor word and the anchor cut off)."""
    special = set(tokenizer.all_special_ids)
    anchor = next(i for i in range(len(tokenizer)) if i not in special and tokenizer.decode([i]).isalnum())
    prefix = tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
    pairs = tokenizer.batch_decode([[anchor, i] for i in range(min(vocab_size, len(tokenizer)))],
                                   clean_up_tokenization_spaces=False)
    texts = [pair[len(prefix):] if pair.startswith(prefix) else tokenizer.decode([i]) for i, pair in enumerate(pairs)]
    return texts + [""] * (vocab_size - len(texts))  # ids past the tokenizer (padded embeddings) are never seen


def token_boundaries(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """([V] before, [V] after) bool, or None when every token has a boundary before it (word-level tokenizers)."""
    texts = token_texts(tokenizer, vocab_size)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special = set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}
    before = torch.tensor([i in special or not text or is_boundary_character(text[0]) for i, text in enumerate(texts)])
    after = torch.tensor([i in special or not text or is_boundary_character(text[-1]) for i, text in enumerate(texts)])
    if not bool(before[sorted(set(range(len(texts))) - special)].any()):
        raise ValueError("no token of this tokenizer begins a word (none begins with whitespace or punctuation): "
                         'it cannot say where words end; use action="token"')
    return None if bool(before.all()) else (before, after)


def encode_boundaries(boundaries: tuple[torch.Tensor, torch.Tensor] | None, vocab_size: int) -> dict:
    """For config.json: each [V] bool vector as base64 of its packed bits, or that every token is a word."""
    if boundaries is None:
        return {"vocab_size": vocab_size, "every_token_is_a_word": True}
    before, after = boundaries
    pack = lambda bits: base64.b64encode(np.packbits(bits.numpy()).tobytes()).decode()  # noqa: E731
    return {"vocab_size": vocab_size, "before": pack(before), "after": pack(after)}


def every_token_is_a_word(data: dict | None) -> bool:
    """Whether `encode_boundaries` data (None: none stored, the token action) puts a boundary around every token."""
    return data is None or bool(data.get("every_token_is_a_word"))


def decode_boundaries(data: dict | None, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([V] before, [V] after) bool from `encode_boundaries` (None: a boundary around every token)."""
    if data is not None and data["vocab_size"] != vocab_size:
        raise ValueError(f"the token boundaries cover {data['vocab_size']} tokens but the model has {vocab_size}")
    if every_token_is_a_word(data):
        return torch.ones(vocab_size, dtype=torch.bool), torch.ones(vocab_size, dtype=torch.bool)

    def unpack(text: str) -> torch.Tensor:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:vocab_size]
        return torch.from_numpy(bits.astype(bool))

    return unpack(data["before"]), unpack(data["after"])


def resize_boundaries(data: dict | None, vocab_size: int) -> dict | None:
    """`encode_boundaries` data for a resized vocabulary: tokens added at the end (added tokens, split out by
    the tokenizer before any word is read) have a boundary on both sides."""
    if data is None:
        return None
    if every_token_is_a_word(data):
        return {**data, "vocab_size": vocab_size}
    before, after = decode_boundaries(data, data["vocab_size"])
    grow = torch.ones(max(0, vocab_size - len(before)), dtype=torch.bool)
    return encode_boundaries((torch.cat([before, grow])[:vocab_size], torch.cat([after, grow])[:vocab_size]),
                             vocab_size)


def word_forms_only(factors: list[TokenSwapGroup], boundaries, describe=str) -> list[TokenSwapGroup]:
    """Drop (with one warning) the orbits whose tokens disagree on `before` or `after`: swapping them would
    change where words begin or end, which no group action on words may do."""
    if boundaries is None:
        return factors
    before, after = boundaries
    kept_factors = []
    for factor in factors:
        kept, dropped, kept_forms, dropped_forms = [], [], [], []
        for s, orbit in enumerate(factor.orbits):
            agree = len({(bool(before[t]), bool(after[t])) for t in orbit}) == 1
            (kept if agree else dropped).append(orbit)
            form = factor.forms[s] if factor.forms else tuple(describe(t) for t in orbit)
            (kept_forms if agree else dropped_forms).append(form)
        if dropped:
            if not kept:
                raise ValueError(
                    f"group {factor.name!r}: the forms {[[describe(t) for t in o] for o in dropped]} begin or end "
                    f"words differently in this tokenizer, so none can be swapped as a whole word"
                )
            warnings.warn(
                f"group {factor.name!r}: these forms begin or end words differently and are not swapped: "
                + ", ".join("|".join(repr(describe(t)) for t in orbit) for orbit in dropped),
                stacklevel=3,
            )
        kept_factors.append(dataclasses.replace(
            factor, orbits=tuple(kept), forms=tuple(kept_forms) if factor.forms else (),
            dropped=factor.dropped + tuple(dropped_forms),
        ))
    return kept_factors


def word_begins(ids: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                preceding: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] bool: whether a word begins where token t begins (see the module docstring)."""
    first = torch.ones_like(ids[:, :1], dtype=torch.bool) if preceding is None else after[preceding][:, None]
    return before[ids] | torch.cat([first, after[ids[:, :-1]]], dim=1)


def word_occurrences(ids: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                     preceding: torch.Tensor | None = None, following: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] bool: where a word begins and ends at t (see the module docstring). `preceding` ([B]) is the
    token before ids[:, 0] when the sequence started earlier (a KV cache holds it), else None; `following`
    ([B], -100 for none) the token known to come after the last position (a seq2seq label), else None."""
    last = torch.ones_like(ids[:, :1], dtype=torch.bool)
    if following is not None:
        last = ((following < 0) | before[following.clamp(min=0)])[:, None]
    ends = torch.cat([before[ids[:, 1:]], last], dim=1)
    return word_begins(ids, before, after, preceding) & ends


def act_on_words(ids: torch.Tensor, permutation: torch.Tensor, before: torch.Tensor, after: torch.Tensor):
    """[B, T] ids with the token permutation of one group element ([V]) applied to word occurrences only."""
    return torch.where(word_occurrences(ids, before, after), permutation[ids], ids)


def glued_words(ids: torch.Tensor, support: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                start: int = 0) -> int:
    """How many support tokens at positions >= `start` of [B, T] ids begin a word and are continued by the next
    token (a group word glued to a piece: " Black"+"stone" is one, " Black"+" man" is not)."""
    begins = word_begins(ids, before, after)
    glued = torch.isin(ids[:, :-1], support) & begins[:, :-1] & ~before[ids[:, 1:]]
    return int(glued[:, start:].sum())


def acted_columns(ids: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                  support: torch.Tensor) -> torch.Tensor:
    """[B, T, u] bool: whether the scores at t of support token support[j] are acted on (it would begin a
    word as the next token)."""
    return before[support] | after[ids][..., None]


def glue_positions(ids: torch.Tensor, occurrences: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions holding a support token as a word occurrence, after which no piece may follow."""
    return occurrences & (lookup[ids] >= 0)


def mask_glued(scores: torch.Tensor, positions: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Scores [B, T, V] with -inf for the tokens that would continue a word (not before[v]) at `positions`."""
    return scores.masked_fill(positions[..., None] & ~before, float("-inf"))
