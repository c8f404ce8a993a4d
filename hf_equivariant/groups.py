"""Word-swap groups: the user's word lists, and their resolution to permutations of token ids.

A factor has n classes of aligned words (class c, position j). Its elements are permutations sigma
of the classes: cyclic, sigma_k(c) = (c + k) mod n (n elements); symmetric, all n! of them. Element
sigma sends the word at (c, j) to the word at (sigma(c), j).

Resolved against a tokenizer, a factor becomes a table of *orbits*: rows of n token ids, one per
class, that every element permutes the same way. A row comes from one position j and one surface
form of its words (plain, leading space, capitalised, both). From the orbits follow the permutation
table p_g over the vocabulary (p_g[v] = g(v), identity off the orbits), its inverse, and the
canonicaliser (every orbit token -> the class-0 token of its row).

Before it meets a tokenizer, a factor acts on text as a reader sees it (`WordSwapGroup.act`): on whole
words, in their plain and capitalised forms. A *word occurrence* of a form f at characters [i, j) of a text
is one where a word begins and ends, with the character rule of `boundaries` (word characters are letters,
digits, combining marks and U+FFFD):

  begins = i = 0  or  text[i-1] is a boundary character  or  f begins with one
  ends   = j = len(text)  or  text[j] is a boundary character  or  f ends with one

the same rule that `boundaries` applies to tokens (so "Jackson" holds no occurrence of "son"). Occurrences
are taken left to right, the longest form first at each start. The element sigma replaces each occurrence
of the form of class c by the same form of class sigma(c). The forms of a row agree on whether they begin
and end with a boundary character, so g . text has its occurrences where text has them, and the word action
is a group action: (g h) . text = g . (h . text), as long as no form occurs inside another form at a boundary
character within it (true of the presets: their forms hold letters, digits and underscores only).
"""

from __future__ import annotations

import functools
import itertools
import re
import warnings
from dataclasses import dataclass, replace

import torch

from .boundaries import is_boundary_character

KINDS = ("cyclic", "symmetric")


def class_permutations(kind: str, num_classes: int) -> list[tuple[int, ...]]:
    """The group's elements as permutations of the classes, identity first."""
    if kind == "cyclic":
        return [tuple((c + k) % num_classes for c in range(num_classes)) for k in range(num_classes)]
    if kind == "symmetric":
        return list(itertools.permutations(range(num_classes)))
    raise ValueError(f"unknown group kind {kind!r}: choose one of {KINDS}")


def word_forms(word: str) -> tuple[str, ...]:
    """The surface forms a word covers: plain, leading space, capitalised, both."""
    capitalised = word[:1].upper() + word[1:]
    return (word, " " + word, capitalised, " " + capitalised)


def describe_form(texts) -> str:
    """One form across the classes, as the warnings and the CLI write it: '' man'|' woman'."""
    return "|".join(repr(t) for t in texts)


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of `text` if the tokenizer writes it as exactly one known token, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    return None


@dataclass(frozen=True)
class WordSwapGroup:
    """A factor of the symmetry group, given as aligned classes of words.

    `WordSwapGroup("gender", [["man", "he"], ["woman", "she"]])` swaps man<->woman and he<->she.
    `kind="cyclic"` (default) gives the n rotations of the n classes, `kind="symmetric"` all n!
    permutations. With `skip_missing=True`, positions whose words have no common single-token form
    in a tokenizer are dropped with a warning instead of raising (the presets use it to stay usable
    with any tokenizer).
    """

    name: str
    classes: tuple[tuple[str, ...], ...]
    kind: str = "cyclic"
    skip_missing: bool = False

    def __post_init__(self):
        given = [self.classes] if isinstance(self.classes, str) else list(self.classes)
        if any(isinstance(words, str) for words in given):  # tuple("Black") would be the letters B, l, a, c, k
            raise ValueError(
                f"group {self.name!r}: each class must be a list or tuple of words, not a string, got classes "
                f"{given!r}; for one word per class write {[[w] if isinstance(w, str) else w for w in given]!r}"
            )
        classes = tuple(tuple(words) for words in given)
        object.__setattr__(self, "classes", classes)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a group needs a non-empty name, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"group {self.name!r}: unknown kind {self.kind!r}, choose one of {KINDS}")
        if len(classes) < 2:
            raise ValueError(f"group {self.name!r} needs at least two classes, got {len(classes)}")
        seen = {}
        for c, words in enumerate(classes):
            if len(words) != len(classes[0]):
                raise ValueError(
                    f"group {self.name!r}: classes must be aligned word lists of equal length, but class 0 "
                    f"has {len(classes[0])} words {list(classes[0])} and class {c} has {len(words)} {list(words)}"
                )
            for j, word in enumerate(words):
                if not isinstance(word, str) or not word.strip() or word != word.strip():
                    raise ValueError(f"group {self.name!r}: class {c} holds an invalid word {word!r}")
                if word in seen:
                    raise ValueError(
                        f"group {self.name!r}: the word {word!r} is listed twice (class {seen[word][0]} "
                        f"position {seen[word][1]} and class {c} position {j}); a group element must be a permutation"
                    )
                seen[word] = (c, j)
        if not classes[0]:
            raise ValueError(f"group {self.name!r}: classes are empty")

    @property
    def elements(self) -> list[tuple[int, ...]]:
        """The permutations sigma of the classes, identity first (`class_permutations`)."""
        return class_permutations(self.kind, len(self.classes))

    @property
    def order(self) -> int:
        return len(self.elements)

    @property
    def words(self) -> set[str]:
        return {word for words in self.classes for word in words}

    def with_class_first(self, word: str) -> WordSwapGroup:
        """The same group with its classes rotated so that the class holding `word` is class 0.

        A rotation leaves the group's elements as a set unchanged (the cyclic group's rotations are the same
        maps c -> c + k; the symmetric group is every permutation), so equitune, equizero and lambda_equitune
        give the same model. What changes is the class the multi forms canonicalise the other factors to, and
        the class canonicalize sends the first word to (on a symmetric factor it sends the classes, in the order
        their words first occur, to 0, 1, 2, ..., so there the whole order counts): both read class 0, so list
        first the class the model knows best (docs/results/scan.md, lambda_fairness.md)."""
        first = next((c for c, words in enumerate(self.classes) if word in words), None)
        if first is None:
            raise ValueError(f"group {self.name!r} has no word {word!r}; its classes are "
                             f"{[list(words) for words in self.classes]}")
        return replace(self, classes=self.classes[first:] + self.classes[:first])

    @functools.cached_property
    def text_orbits(self) -> tuple[tuple[str, ...], ...]:
        """Rows of texts, one per class, that every element permutes as it permutes the classes: for each
        position j, its words and their capitalised forms (`word_forms` without the leading space, which a reader
        sees between words, not in them). As in `resolve`, a row that repeats a text of an earlier row of its
        position (a word that is its own capitalisation, "LGBT") is left out, and so is a row whose texts
        disagree on beginning or ending with a boundary character (as `boundaries.word_forms_only` does)."""
        rows = []
        for j in range(len(self.classes[0])):
            taken = set()
            for texts in dict.fromkeys(zip(*(word_forms(words[j])[::2] for words in self.classes))):
                edges = {(is_boundary_character(t[0]), is_boundary_character(t[-1])) for t in texts}
                if taken.isdisjoint(texts) and len(edges) == 1:
                    rows.append(texts)
                    taken.update(texts)
        _check_orbits(self.name, rows, repr)
        return tuple(rows)

    @functools.cached_property
    def _text_lookup(self) -> tuple[re.Pattern, list[str], dict[str, tuple[int, int]]]:
        """(a pattern finding where any form starts, the forms longest first, form -> (row, class))."""
        place = {text: (r, c) for r, row in enumerate(self.text_orbits) for c, text in enumerate(row)}
        forms = sorted(place, key=len, reverse=True)
        return re.compile("(?=" + "|".join(map(re.escape, forms)) + ")"), forms, place

    def occurrences(self, text: str) -> list[tuple[int, int, int, int]]:
        """The word occurrences of the group's forms in `text` (module docstring), left to right:
        (start, end, row of `text_orbits`, class)."""
        starts, forms, place = self._text_lookup
        found, end = [], 0
        for start in (m.start() for m in starts.finditer(text)):
            if start < end:
                continue
            for form in forms:
                stop = start + len(form)
                if (text.startswith(form, start)
                        and (start == 0 or is_boundary_character(text[start - 1]) or is_boundary_character(form[0]))
                        and (stop == len(text) or is_boundary_character(text[stop])
                             or is_boundary_character(form[-1]))):
                    found.append((start, stop, *place[form]))
                    end = stop
                    break
        return found

    def _replace(self, text: str, choose) -> str:
        """`text` with each occurrence (row r, class c) replaced by text_orbits[r][choose(c)]."""
        pieces, last = [], 0
        for start, stop, row, c in self.occurrences(text):
            pieces += [text[last:start], self.text_orbits[row][choose(c)]]
            last = stop
        return "".join(pieces) + text[last:]

    def act(self, text: str | list[str], index):
        """The word action on text: element `index` (an int) applied to a text or a list of texts, of the same
        form; for a sequence or [K] tensor of element indices, the K results, copy-major (as `symmetry` says).
        Element sigma sends each word occurrence of class c to the same form of class sigma(c)."""
        if not isinstance(index, int):
            return [self.act(text, int(k)) for k in index]
        if not isinstance(text, str):
            return [self.act(t, index) for t in text]
        sigma = self.elements[index]
        return self._replace(text, sigma.__getitem__)

    def output_permutations(self, tokenizer=None, vocab_size: int | None = None) -> torch.Tensor:
        """[|G|, V]: the action on a model's scores over a vocabulary, which exists only with a tokenizer:
        `resolve(tokenizer, vocab_size).output_permutations()` (see `TokenSwapGroup`). On generated text the
        output action is `act` itself. Raises without a tokenizer rather than return None, which in the
        protocol means invariant outputs."""
        if tokenizer is None:
            raise ValueError(
                f"group {self.name!r} is given as words: its action on a model's scores permutes a vocabulary, so "
                f"pass the model's tokenizer (output_permutations(tokenizer)), or act on generated text with act()"
            )
        return self.resolve(tokenizer, vocab_size).output_permutations()

    def canonicalize(self, text: str | list[str]) -> str | list[str]:
        """The least text, in code-point order, of the orbit {g . text}: the same for every g . text (the orbits
        of a group action are equal or disjoint) and in the orbit by construction. |G| word actions."""
        if not isinstance(text, str):
            return [self.canonicalize(t) for t in text]
        return min(self.act(text, range(self.order)))

    def to_dict(self) -> dict:
        """The JSON form of config files and `--groups-file`: name, classes, kind, skip_missing."""
        return {"name": self.name, "classes": [list(c) for c in self.classes], "kind": self.kind,
                "skip_missing": self.skip_missing}

    @classmethod
    def from_dict(cls, data: dict) -> WordSwapGroup:
        return cls(**data)

    def resolve(self, tokenizer, vocab_size: int | None = None) -> TokenSwapGroup:
        """The token-level group: one orbit per position and surface form that is a single token in every class.

        A form whose row shares a token with an earlier form's row of the same position repeats a word
        (one that is its own capitalisation, like "LGBT" in straight|LGBT: the row Straight|LGBT would
        send LGBT to two tokens); it is left out with a warning. Rows of different positions that share
        a token are a real conflict and raise. The result records the text of every swapped form
        (`forms`) and the forms left out (`dropped`).
        """
        orbits, forms, skipped, same_word, missing = [], [], [], [], []
        for j in range(len(self.classes[0])):
            found, taken = False, set()  # taken: the tokens of position j's orbits so far
            forms_per_class = [word_forms(words[j]) for words in self.classes]
            for texts in dict.fromkeys(zip(*forms_per_class)):
                ids = [single_token_id(tokenizer, text) for text in texts]
                if all(i is not None for i in ids):
                    found = True
                    if tuple(ids) in orbits:
                        continue
                    if not taken.isdisjoint(ids):
                        same_word.append(texts)
                        continue
                    orbits.append(tuple(ids))
                    forms.append(texts)
                    taken.update(ids)
                elif any(i is not None for i in ids):
                    skipped.append(texts)
            if not found:
                missing.append(j)
        if missing and not self.skip_missing:
            raise ValueError(self._missing_message(tokenizer, missing[0]))
        if skipped:
            warnings.warn(
                f"group {self.name!r}: these forms are not a single token for every class and are not swapped: "
                + ", ".join(map(describe_form, skipped)),
                stacklevel=2,
            )
        if same_word:
            warnings.warn(
                f"group {self.name!r}: these forms repeat a token of another form of the same words (a word that is "
                f"its own capitalisation, like 'LGBT') and are left out, as a token can be swapped with one token "
                f"only: " + ", ".join(map(describe_form, same_word)),
                stacklevel=2,
            )
        absent = [tuple(words[j] for words in self.classes) for j in missing]
        if missing:
            dropped = ["|".join(words) for words in absent]
            if len(missing) == len(self.classes[0]):
                raise ValueError(f"group {self.name!r}: no word has a single-token form in this tokenizer: {dropped}")
            warnings.warn(f"group {self.name!r}: no single-token form, left out: {', '.join(dropped)}", stacklevel=2)
        _check_orbits(self.name, orbits, lambda i: repr(tokenizer.decode([i])))
        return TokenSwapGroup(
            name=self.name,
            kind=self.kind,
            classes=self.classes,
            orbits=tuple(orbits),
            vocab_size=len(tokenizer) if vocab_size is None else vocab_size,
            forms=tuple(forms),
            dropped=tuple(absent + skipped + same_word),
        )

    def _missing_message(self, tokenizer, j: int) -> str:
        words = [words[j] for words in self.classes]
        culprits = [w for w in words if all(single_token_id(tokenizer, f) is None for f in word_forms(w))]
        if culprits:
            return (
                f"group {self.name!r}: {', '.join(map(repr, culprits))} {'has' if len(culprits) == 1 else 'have'} "
                f"no single-token form (tried {', '.join(repr(f) for f in word_forms(culprits[0]))}); use another "
                f"word, or skip_missing=True to leave the position out"
            )
        return (
            f"group {self.name!r}: the words {words} have no surface form that is a single token for all of them "
            f"at once, so they cannot be swapped token for token"
        )


def _check_orbits(name: str, orbits, describe) -> None:
    """Every token may stand in one place of one orbit only; otherwise an element is not a permutation."""
    place = {}
    for s, orbit in enumerate(orbits):
        for c, token in enumerate(orbit):
            if token in place:
                s0, c0 = place[token]
                if s0 == s:
                    raise ValueError(
                        f"group {name!r}: token {describe(token)} is in two classes ({c0} and {c}); "
                        f"a word may belong to one class only"
                    )
                partners = sorted({describe(orbits[s0][(c0 + 1) % len(orbit)]), describe(orbit[(c + 1) % len(orbit)])})
                raise ValueError(
                    f"group {name!r}: token {describe(token)} would be swapped with two different tokens "
                    f"({' and '.join(partners)}); a group element must be a permutation, keep one of the pairs"
                )
            place[token] = (s, c)


@dataclass(frozen=True)
class TokenSwapGroup:
    """A factor resolved to token ids: `orbits[s][c]` is the token of class c in orbit s.

    `forms[s][c]` is the text of that token (empty when the group was built from ids alone); `dropped` are
    the forms of the words, one text per class, that the tokenizer could not swap (not a single token for
    every class, a repeated token, or no form at all). Both only describe the group (model card, CLI).
    """

    name: str
    kind: str
    classes: tuple[tuple[str, ...], ...]
    orbits: tuple[tuple[int, ...], ...]
    vocab_size: int
    forms: tuple[tuple[str, ...], ...] = ()
    dropped: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "classes", self.word_group.classes)  # name, kind and classes checked as words
        object.__setattr__(self, "orbits", tuple(tuple(int(t) for t in o) for o in self.orbits))
        object.__setattr__(self, "forms", tuple(tuple(f) for f in self.forms))
        object.__setattr__(self, "dropped", tuple(tuple(f) for f in self.dropped))
        # Tables are saved with their words (a config may be edited by hand): they must agree.
        if not self.orbits:
            raise ValueError(f"group {self.name!r} has no token orbits: it would move no token")
        for s, orbit in enumerate(self.orbits):
            if len(orbit) != len(self.classes):
                raise ValueError(
                    f"group {self.name!r}: orbit {s} {list(orbit)} has {len(orbit)} tokens but the group has "
                    f"{len(self.classes)} classes {[list(c) for c in self.classes]}: the classes and orbits disagree "
                    f"(an orbit holds one token per class); resolve the group from its words again"
                )
        if any(not 0 <= t < self.vocab_size for o in self.orbits for t in o):
            raise ValueError(
                f"group {self.name!r}: token ids must lie in [0, {self.vocab_size}), got {self.orbits}"
            )
        _check_orbits(self.name, self.orbits, lambda i: f"id {i}")
        if self.forms and len(self.forms) != len(self.orbits):
            raise ValueError(
                f"group {self.name!r}: {len(self.forms)} forms for {len(self.orbits)} orbits; give the text of "
                f"every orbit, or none"
            )

    @functools.cached_property
    def word_group(self) -> WordSwapGroup:
        """The factor as words: its elements, and its action on text before tokenization."""
        return WordSwapGroup(self.name, self.classes, self.kind)

    @property
    def elements(self) -> list[tuple[int, ...]]:
        return self.word_group.elements

    @property
    def order(self) -> int:
        return self.word_group.order

    @property
    def support(self) -> list[int]:
        """The token ids the factor moves, sorted."""
        return sorted(t for orbit in self.orbits for t in orbit)

    def permutation_tables(self) -> torch.Tensor:
        """[|G|, V] long: row g is p_g with p_g[v] = g(v)."""
        tables = torch.arange(self.vocab_size).repeat(self.order, 1)
        if self.orbits:
            orbits = torch.tensor(self.orbits)  # [m, n]
            sigma = torch.tensor(self.elements)  # [|G|, n]
            tables[:, orbits] = orbits[:, sigma].transpose(0, 1)  # tables[g, orbits[s, c]] = orbits[s, sigma[g, c]]
        return tables

    def inverse_tables(self) -> torch.Tensor:
        """[|G|, V] long: row g is p_{g^-1}."""
        return self.permutation_tables().argsort(dim=1)

    def canonicalizer(self) -> torch.Tensor:
        """[V] long: every orbit token -> the class-0 token of its orbit; identity elsewhere."""
        table = torch.arange(self.vocab_size)
        if self.orbits:
            orbits = torch.tensor(self.orbits)
            table[orbits] = orbits[:, :1].expand_as(orbits)
        return table

    def act(self, ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[K, *ids.shape]: the elements `index` applied to token ids (every support token is moved)."""
        return self.permutation_tables().to(ids.device)[index][:, ids]

    def output_permutations(self) -> torch.Tensor:
        """[|G|, V]: (g^-1 . y)[..., v] = y[..., p_g[v]] for scores y over the vocabulary (see `symmetry`)."""
        return self.permutation_tables()

    def canonicalize(self, ids: torch.Tensor) -> torch.Tensor:
        """Every orbit token replaced by the class-0 token of its orbit: the same for every g . ids (invariant, but
        not always in the orbit of ids: two words of different classes both become the class-0 word)."""
        return self.canonicalizer().to(ids.device)[ids]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "classes": [list(c) for c in self.classes],
            "orbits": [list(o) for o in self.orbits],
            "vocab_size": self.vocab_size,
            "forms": [list(f) for f in self.forms],
            "dropped": [list(f) for f in self.dropped],
        }

    @classmethod
    def from_dict(cls, data: dict) -> TokenSwapGroup:
        return cls(**data)


def resolve_groups(groups, tokenizer=None, vocab_size: int | None = None) -> list[TokenSwapGroup]:
    """Resolve the factors of a product group and check that they commute (act on disjoint tokens).

    `groups` holds WordSwapGroup (needs `tokenizer`), TokenSwapGroup or their dicts. Every table must
    cover `vocab_size` tokens (the model's vocabulary).
    """
    groups = list(groups)
    if not groups:
        raise ValueError("give at least one group")
    names = [g["name"] if isinstance(g, dict) else g.name for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"group names must be unique, got {names}")
    words = [(g.name, g.words) for g in groups if isinstance(g, WordSwapGroup)]
    for (name_a, words_a), (name_b, words_b) in itertools.combinations(words, 2):
        if shared := sorted(words_a & words_b):
            raise ValueError(
                f"groups {name_a!r} and {name_b!r} both contain {shared}: factors of a product must act on "
                f"disjoint words so that they commute"
            )
    resolved = []
    for group in groups:
        if isinstance(group, dict):
            group = TokenSwapGroup.from_dict(group)
        if isinstance(group, WordSwapGroup):
            if tokenizer is None:
                raise ValueError(f"group {group.name!r} is given as words: pass the tokenizer to resolve it")
            if vocab_size is not None and len(tokenizer) > vocab_size:
                raise ValueError(
                    f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab_size}: "
                    f"they do not belong together"
                )
            group = group.resolve(tokenizer, vocab_size=vocab_size)
        elif not isinstance(group, TokenSwapGroup):
            raise TypeError(f"expected a WordSwapGroup, TokenSwapGroup or dict, got {type(group).__name__}")
        if vocab_size is not None and group.vocab_size != vocab_size:
            raise ValueError(
                f"group {group.name!r} was resolved for a vocabulary of {group.vocab_size} tokens but the model "
                f"has {vocab_size}: resolve it with the model's tokenizer and vocab_size={vocab_size}"
            )
        resolved.append(group)
    for a, b in itertools.combinations(resolved, 2):
        if shared := sorted(set(a.support) & set(b.support)):
            shown = [tokenizer.decode([t]) for t in shared] if tokenizer is not None else shared
            raise ValueError(
                f"groups {a.name!r} and {b.name!r} both move the tokens {shown}: factors of a product must act "
                f"on disjoint tokens so that they commute"
            )
    return resolved
