"""Copy rows: which inner row computes each copy of each input row, and which KV-cache row holds its past.

The K copies of a batch of B rows are K*B *copy rows*, copy-major (row k*B + b is copy k of input row b).
With deduplication, copies that are equal token for token share one *inner row* (`CopyRows`). In
generation a copy's history is its cache row plus its new tokens, so the KV cache holds one row per
distinct history; `CacheRows` is the one owner of that state, per cache object.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CopyRows:
    """Which inner row computes each copy row: copy row r = k*B + b is computed by inner row inverse[r].

    Copies of one input row that are equal token for token (a prompt without any word of a factor gives
    |Gi| equal copies in that factor's branch) share an inner row; `representatives[u]` is a copy row that
    inner row u computes, `owners` the input row it belongs to.
    """

    inverse: torch.Tensor  # [K*B] long
    representatives: torch.Tensor  # [U] long
    batch_size: int

    @property
    def owners(self) -> torch.Tensor:
        return self.representatives % self.batch_size

    @property
    def num_rows(self) -> int:
        return self.representatives.shape[0]

    @classmethod
    def every(cls, num_copies: int, batch_size: int, device=None) -> CopyRows:
        """One inner row per copy row (no deduplication)."""
        rows = torch.arange(num_copies * batch_size, device=device)
        return cls(rows, rows, batch_size)

    @classmethod
    def canonical(cls, num_copies: int, batch_size: int, device=None) -> CopyRows:
        """One inner row per input row, its copy 0, computing every copy row of it: for a canonicalising method,
        whose copy rows of an input all hold its canonical copy. These rows never fork, so a static cache can
        hold them."""
        return cls(torch.arange(num_copies * batch_size, device=device) % batch_size,
                   torch.arange(batch_size, device=device), batch_size)

    @classmethod
    def distinct(cls, keys: torch.Tensor, batch_size: int) -> CopyRows:
        """One inner row per distinct key row ([K*B, L] long). For `combine`, the keys must tell input rows
        apart (an inner row may serve one input row only)."""
        _, inverse = torch.unique(keys, dim=0, return_inverse=True)
        rows = torch.arange(keys.shape[0], device=keys.device)
        first = torch.full((int(inverse.max()) + 1,), keys.shape[0], device=keys.device)
        return cls(inverse, first.scatter_reduce(0, inverse, rows, "amin"), batch_size)

    def reorder(self, index: torch.Tensor) -> tuple[CopyRows, torch.Tensor]:
        """After copy row r takes the history of copy row index[r] (beam search): the new rows, and the
        old inner rows they keep, in order. Beams may now share rows: these rows describe a KV cache
        (the past of the next step), not outputs to combine."""
        kept, inverse = torch.unique(self.inverse[index], return_inverse=True)
        return CopyRows.distinct(inverse[:, None], self.batch_size), kept


def expand_rows(index: torch.Tensor, num_copies: int, batch_size: int) -> torch.Tensor:
    """Map a row index over B rows (e.g. beam reordering) to the same index over all K*B copy rows."""
    offsets = torch.arange(num_copies, device=index.device) * batch_size
    return (offsets[:, None] + index[None, :]).flatten()


def holds_past(cache) -> bool:
    """Whether `cache` already holds some of the sequence: attention layers count their tokens; a cache of
    linear-attention (Mamba) layers only says whether it holds a state."""
    try:
        return cache.get_seq_length() > 0
    except ValueError:
        return cache.has_previous_state()


class CacheRows:
    """The copy rows of the KV caches a wrapper has filled: for each cache, the `CopyRows` saying which cache
    row holds the past of each copy row. The state lives here, keyed weakly by the cache object (nothing is
    written onto transformers' caches; a cache that is dropped drops its entry). A cache this owner has not
    seen holds one row per copy row (filled without deduplication), or nothing yet.

    A copy of a cache (`copy.deepcopy`) is a new object whose rows are unknown here: continue from the
    original, or from a cache filled with `deduplicate=False`.
    """

    def __init__(self):
        self._rows = weakref.WeakKeyDictionary()

    def __getstate__(self):  # pickling a model (DDP spawn, torch.save) carries no caches
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return CacheRows()

    def of(self, cache) -> CopyRows | None:
        """The copy rows of `cache`, or None where it holds one row per copy row or nothing (or is None)."""
        return None if cache is None else self._rows.get(cache)

    def record(self, cache, rows: CopyRows | None) -> None:
        """After an inner call filled `cache` with the inner rows of `rows` (None: one row per copy row)."""
        if rows is None:
            self._rows.pop(cache, None)
        else:
            self._rows[cache] = rows

    def assign_rows_and_reorder_cache(self, keys: torch.Tensor, num_copies: int, batch_size: int,
                                      cache=None) -> CopyRows:
        """The inner rows that compute the K*B copy rows, whose new tokens (with any per-copy context)
        `keys` ([K*B, L]) describe; reorders `cache` so that it holds their pasts, one row each.

        Copies with equal histories (past cache row and keys) share an inner row, within one input row
        (`combine` adds each inner row to one input row). Copies that shared a cache row and now receive
        different tokens fork it: the cache is reordered (as in beam search) to one row per new inner row.
        """
        every = CopyRows.every(num_copies, batch_size, keys.device)
        past = self.of(cache)
        if past is None and cache is not None and holds_past(cache):
            past = every  # a cache filled without deduplication
        prefix = [every.owners[:, None]] + ([] if past is None else [past.inverse[:, None]])
        rows = CopyRows.distinct(torch.cat([*prefix, keys], dim=1), batch_size)
        if past is not None:
            index = past.inverse[rows.representatives]
            if index.shape[0] != past.num_rows or not torch.equal(index, torch.arange(past.num_rows,
                                                                                      device=index.device)):
                cache.reorder_cache(index)
        return rows

    def reorder_for_beams(self, cache, index: torch.Tensor) -> None:
        """Copy row r takes the history of copy row index[r] (beam search, `index` over all K*B copy rows):
        reorder `cache` and its copy rows alike, keeping the cache rows still used."""
        past = self.of(cache)
        if past is None:
            cache.reorder_cache(index)
            return
        rows, kept = past.reorder(index)
        self._rows[cache] = rows
        cache.reorder_cache(kept)
