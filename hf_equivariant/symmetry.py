"""The protocol every symmetry group of the library follows, whatever it acts on (token ids or pixels).

A group G with elements g_0 = e, g_1, ..., g_{|G|-1} gives
- `elements`: the elements, identity first (`order` = |G|);
- `act(x, index)`: its action on inputs, the copies g_k . x for the element indices `index` ([K] long),
  stacked copy-major as [K, *x.shape];
- `output_permutations()`: its action on outputs. For outputs indexed by a vocabulary, the [|G|, V] table
  p with (g_k^-1 . y)[..., v] = y[..., p[k, v]] (so equitune reads copy k at column p[k, v]); None when the
  outputs are invariant (class logits of an image, CLIP's image-text scores): then g^-1 . y = y;
- `canonicalize(x)`: an orbit-invariant form, c(g . x) = c(x) for every g. The symmetrisation methods need
  only that invariance. The image groups and `WordSwapGroup` return a member of the orbit of x;
  `TokenSwapGroup` (the multi design's "canonicalise the other factors" on ids) sends every swapped word to
  its class-0 word, which need not be in the orbit ("Black and White" -> "Black and Black");
- `to_dict()` / `from_dict(data)`: a JSON form for config.json.

Implementations:
- `groups.WordSwapGroup`, a word-swap group as its user writes it, acts on text as a reader sees it: `act`
  swaps whole words (plain and capitalised forms; "Jackson said he" -> "Jackson said she" keeps "Jackson")
  in a text or a list of texts, with the word-boundary rule of `boundaries`; `canonicalize` gives the least
  text of the orbit; `output_permutations(tokenizer)` is the action on scores over that tokenizer's
  vocabulary (a vocabulary exists only with a tokenizer; without one it raises rather than return None,
  which would claim invariant outputs).
- `groups.TokenSwapGroup`, the same group resolved to token ids (`WordSwapGroup.resolve(tokenizer)`), takes
  its elements from its `word_group` and acts on ids: `act` moves every group token (the token action; the
  wrappers' word action, which leaves pieces of longer words alone, is `boundaries.act_on_words`).
- `image_groups.ImageGroup` (rotations and flips of pixel_values) and `image_groups.ImageGroupProduct` (a
  product of those as one group, as the multi-input networks use it): invariant outputs.

`check.check_equivariance` reads a wrapper's factors through this protocol: outputs that no factor permutes
(`output_permutations() is None`) are checked for invariance on inputs moved by `act`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SymmetryGroup(Protocol):
    name: str

    @property
    def elements(self) -> list: ...

    @property
    def order(self) -> int: ...

    def act(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...

    def output_permutations(self) -> torch.Tensor | None: ...

    def canonicalize(self, x: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, data: dict) -> SymmetryGroup: ...
