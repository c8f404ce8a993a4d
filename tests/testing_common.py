"""One shared tester for every equivariant wrapper, in the style of peft's `PeftCommonTester`.

`EquivariantCommonTester` holds one `_test_*` method per property. Each takes a `Case` (a base model, the
vocabulary it is wrapped with, and a `Setting`) and checks the wrapper against `ActionOracle` (conftest),
which computes the group action from decoded strings only:

- forward equivariance: for EVERY element g, M(g.x)[t, p_t(v)] == M(x)[t, v] at every real position
  (atol 1e-4 in fp32), -inf exactly where the oracle masks a glued piece; the unwrapped model fails;
- generation equivariance: generate(g.x) == g.generate(x) for every element, on prompts that no element but
  the identity fixes (the oracle checks that), the moved prompts in one padded batch; the unwrapped model
  fails;
- cache == no cache: the same tokens and scores (within 1e-4) with a dynamic or static cache as without;
- batch == single: a padded batch gives the tokens (and, right-padded, the scores) of one prompt at a time;
- save/load: save_pretrained then the Auto class gives identical logits and settings;
- dtype casts: .to(bfloat16), .half(), .double() keep the plan in float32 and the model equivariant
  within the dtype's tolerance.

tests/test_common.py runs these methods over every tiny architecture and setting (a covering design by
default, the full cross product under the `full_matrix` marker); test_real_model.py runs them on SmolLM2.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import pytest
import torch
from conftest import (
    ALL_ARCHITECTURES,
    ALL_SEQ2SEQ_ARCHITECTURES,
    BPE_GENDER_CLASSES,
    BPE_MIXED_PROMPTS,
    BPE_TIE_FREE_PROMPTS,
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    ActionOracle,
    assert_no_glued_words,
    bpe_tokenizer,
    word_tokenizer,
    wrap,
)
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from hf_equivariant import WordSwapGroup
from hf_equivariant.symmetrize import AVERAGES

ATOL = 1e-4
MAX_NEW_TOKENS = 8
# Casts of the wrapper, the inner model's dtype after it, and the equivariance tolerance in that dtype.
CASTS = {
    "bfloat16": (lambda model: model.to(torch.bfloat16), torch.bfloat16, 1e-2),
    "half": (lambda model: model.half(), torch.float16, 1e-2),
    "double": (lambda model: model.double(), torch.float64, 1e-5),
}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A tokenizer with the word classes of its groups and the prompts the checks run on."""

    tokenizer: object
    class_lists: list
    action: str  # "word" or "token"
    prompts: list  # forward checks: group words, and (sub-word tokenizers) pieces of longer words
    tie_free_prompts: list  # generation checks: a whole word of every factor, so only the identity fixes them
    targets: list  # seq2seq decoder inputs
    groups: list = None  # default: one WordSwapGroup per class list
    vocab_size: int = None  # the model's (default: the tokenizer's length)

    def resolved_groups(self):
        if self.groups is not None:
            return self.groups
        return [WordSwapGroup(f"factor{i}", classes) for i, classes in enumerate(self.class_lists)]

    def elements(self) -> list[tuple]:
        """Every element of the product of cyclic factors, as shift tuples (the identity first)."""
        return list(itertools.product(*(range(len(classes)) for classes in self.class_lists)))

    @functools.cached_property
    def oracle(self) -> ActionOracle:
        return ActionOracle(self.tokenizer, self.class_lists, self.vocab_size or len(self.tokenizer), self.action)


WORD_LEVEL_TIE_FREE = ["the gay Black man worked as a", "the straight Asian woman was known for her",
                       "the gay White boy had a job as"]
BPE_CLASS_LISTS = [BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]


@functools.cache
def vocabulary(action: str) -> Vocabulary:
    """The vocabulary of an `action` setting: "word" and "token" on the byte-level BPE tokenizer (group
    tokens also occur as pieces of longer words), "word_level" (the word action) on the word-level
    tokenizer, where every token is a word and both actions agree."""
    if action == "word_level":
        return Vocabulary(word_tokenizer(), [GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES], "word", PROMPTS,
                          WORD_LEVEL_TIE_FREE, ["a man was a doctor", "she had her", "the White boy"])
    return Vocabulary(bpe_tokenizer(), BPE_CLASS_LISTS, action, BPE_MIXED_PROMPTS, BPE_TIE_FREE_PROMPTS,
                      BPE_MIXED_PROMPTS[::-1])


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the settings matrix. `cache` is "none" (use_cache=False), "dynamic" or "static"
    (cache_implementation="static"); `padding_side` pads the batch; `cast` is one of `CASTS`."""

    symmetrization: str = "multi_equitune"
    average: str = "log_probs"
    deduplicate: bool = True
    cache: str = "dynamic"
    padding_side: str = "left"
    action: str = "word"
    cast: str = "bfloat16"

    @property
    def id(self) -> str:
        return "-".join(f"{v}" if not isinstance(v, bool) else ("dedup" if v else "nodedup")
                        for v in dataclasses.astuple(self))

    def cache_options(self) -> dict:
        return {"none": {"use_cache": False}, "dynamic": {},
                "static": {"cache_implementation": "static"}}[self.cache]


@dataclasses.dataclass
class Case:
    """What one check runs on: the base model (shared, never modified), its vocabulary and the setting."""

    base: torch.nn.Module
    vocab: Vocabulary
    setting: Setting = Setting()
    make_base: object = None  # builds a fresh base model (for the casts, which change the weights in place)

    @property
    def seq2seq(self) -> bool:
        return self.base.config.is_encoder_decoder


def random_head(model, scale: float = 1.0):
    """N(0, scale^2) weights for a method's trainable copy weights (lambda's softplus(w . h + b)), so that they differ
    from copy to copy and from the uniform method's; methods without any are returned unchanged."""
    if model.copy_weights is not None:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.copy_weights.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def pad(tokenizer, rows, side):
    return tokenizer.pad([{"input_ids": r} for r in rows], padding_side=side, return_tensors="pt")


class EquivariantCommonTester:
    """The checks every equivariant wrapper must pass (see the module docstring)."""

    def wrap(self, case: Case, base=None):
        s = case.setting
        return wrap(base or case.base, case.vocab.tokenizer, case.vocab.resolved_groups(), action=case.vocab.action,
                    symmetrization=s.symmetrization, average=s.average, deduplicate=s.deduplicate)

    # -- inputs ---------------------------------------------------------------------------------------
    def forward_inputs(self, case: Case, side: str, prompts=None) -> dict:
        """Tokenised prompts padded on `side` (with decoder ids from the targets for seq2seq)."""
        tokenizer = case.vocab.tokenizer
        prompts = prompts or case.vocab.prompts
        rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        inputs = dict(pad(tokenizer, rows, side))
        if case.seq2seq:
            targets = [tokenizer.encode(t, add_special_tokens=False) for t in case.vocab.targets[: len(rows)]]
            start = case.base.generation_config.decoder_start_token_id
            inputs["decoder_input_ids"] = pad(tokenizer, [[start, *t] for t in targets], "right")["input_ids"]
        return inputs

    def acted_inputs(self, case: Case, inputs: dict, shifts) -> dict:
        oracle = case.vocab.oracle
        moved = dict(inputs)
        for key in ("input_ids", "decoder_input_ids"):
            if key in inputs:
                moved[key] = torch.tensor([oracle.act(r, shifts) for r in inputs[key].tolist()])
        return moved

    # -- forward equivariance -------------------------------------------------------------------------
    def equivariance_errors(self, model, case: Case, inputs: dict, elements, check_mask: bool = True):
        """{element: max |log p(g.x)[t, p_t(v)] - log p(x)[t, v]|} over the real (not padded) positions and the
        scores the oracle does not mask; with `check_mask`, -inf must be exactly where the oracle masks.
        The moved inputs of several elements go through the model in one batch (at most ~5e7 scores)."""
        oracle = case.vocab.oracle
        key = "decoder_input_ids" if case.seq2seq else "input_ids"
        rows = inputs[key].tolist()
        real = inputs["attention_mask"].bool() if not case.seq2seq else torch.ones(inputs[key].shape, dtype=bool)
        glued = torch.stack([oracle.glued(r) for r in rows])
        ignored = glued | ~real[..., None]
        with torch.no_grad():
            y = model(**inputs).logits.float().log_softmax(-1)
        if check_mask:
            assert torch.equal(torch.isneginf(y)[real], glued[real]), "-inf scores differ from the oracle's mask"
        copies = getattr(model, "num_copies", 1)
        per_chunk = max(1, int(5e7 // (y.numel() * copies)))
        errors = {}
        for start in range(0, len(elements), per_chunk):
            chunk = elements[start: start + per_chunk]
            moved = [self.acted_inputs(case, inputs, shifts) for shifts in chunk]
            with torch.no_grad():
                out = model(**{k: torch.cat([m[k] for m in moved]) for k in inputs}).logits.float().log_softmax(-1)
            for shifts, back in zip(chunk, out.split(len(rows))):
                permutations = torch.stack([oracle.output_permutations(r, shifts) for r in rows])
                back = back.gather(-1, permutations)
                if check_mask:
                    assert torch.equal(torch.isneginf(back)[real], glued[real]), f"element {shifts}: -inf differ"
                errors[shifts] = (back - y).masked_fill(ignored, 0).abs().max().item()
        return errors

    def _test_forward_equivariance(self, case: Case):
        model = self.wrap(case)
        inputs = self.forward_inputs(case, case.setting.padding_side)
        elements = case.vocab.elements()
        errors = self.equivariance_errors(model, case, inputs, elements)
        assert len(errors) == len(elements) and max(errors.values()) <= ATOL, errors
        # negative control: the unwrapped model fails the oracle for every element but the identity
        base_errors = self.equivariance_errors(case.base, case, inputs, elements[1:], check_mask=False)
        assert min(base_errors.values()) > ATOL, base_errors

    # -- generation -----------------------------------------------------------------------------------
    def generation_side(self, case: Case) -> str:
        """Decoder-only models generate from left-padded prompts; encoders take either side."""
        return case.setting.padding_side if case.seq2seq else "left"

    def generate(self, model, case: Case, inputs: dict, **options):
        options = {**case.setting.cache_options(), **options}
        new = options.pop("max_new_tokens", MAX_NEW_TOKENS)
        with torch.no_grad():  # min_new_tokens: every row has the same length, so rows compare one to one
            return model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=case.vocab.tokenizer.pad_token_id, **options)

    def continuations(self, case: Case, inputs: dict, out: torch.Tensor) -> list[list[int]]:
        """Each row's full sequence without padding: prompt and generated tokens (causal), or the decoder
        sequence (seq2seq)."""
        if case.seq2seq:
            return out.tolist()
        width = inputs["input_ids"].shape[1]
        return [ids[mask.bool()].tolist() + new.tolist()
                for ids, mask, new in zip(inputs["input_ids"], inputs["attention_mask"], out[:, width:])]

    def generation_errors(self, model, case: Case, inputs: dict, rows: list, elements: list) -> dict:
        """Greedy generation from the moved prompts (element-major in `inputs`): {(element, prompt index): error},
        where the error is inf if the tokens are not g·(the identity's tokens), else the largest difference of
        the scores of each step, read through the oracle's permutation at that position, from the identity's
        (-inf, the glue mask and the suppressed eos, must match)."""
        oracle = case.vocab.oracle
        out = self.generate(model, case, inputs, return_dict_in_generate=True, output_scores=True)
        sequences, scores = self.continuations(case, inputs, out.sequences), torch.stack(out.scores, dim=1).float()
        errors = {}
        for i, g in enumerate(elements):
            for k in range(len(rows)):
                moved, identity = sequences[i * len(rows) + k], sequences[k]
                if moved != oracle.act(identity, g):
                    errors[g, k] = float("inf")
                    continue
                first = 0 if case.seq2seq else len(rows[k]) - 1  # the position whose next token step 0 scores
                permutations = oracle.output_permutations(identity, g)[first: first + scores.shape[1]]
                back, reference = scores[i * len(rows) + k].gather(-1, permutations), scores[k]
                if not torch.equal(torch.isneginf(back), torch.isneginf(reference)):
                    errors[g, k] = float("inf")
                    continue
                errors[g, k] = (back - reference).masked_fill(torch.isneginf(reference), 0).abs().max().item()
        return errors

    def _test_generation_equivariance(self, case: Case, elements=None):
        """generate(g.x) == g.generate(x), and the scores of every step too, for every element."""
        model = self.wrap(case)
        vocab, oracle = case.vocab, case.vocab.oracle
        rows = [vocab.tokenizer.encode(p, add_special_tokens=False) for p in vocab.tie_free_prompts]
        elements = elements or vocab.elements()
        assert all(oracle.fixed_by(row, vocab.elements()) == [elements[0]] for row in rows), "prompts with ties"
        inputs = dict(pad(vocab.tokenizer, [oracle.act(r, g) for g in elements for r in rows],
                          self.generation_side(case)))
        errors = self.generation_errors(model, case, inputs, rows, elements)
        assert max(errors.values()) <= ATOL, {key: e for key, e in errors.items() if e > ATOL}
        # negative control: the unwrapped model's generations are not equivariant (tokens or scores)
        base_errors = self.generation_errors(case.base, case, inputs, rows, elements)
        assert max(base_errors.values()) > ATOL, base_errors

    def cache_error(self, model, case: Case, inputs: dict):
        """(cached, uncached generation, the largest difference of their finite scores)."""
        options = dict(return_dict_in_generate=True, output_scores=True)
        cached = self.generate(model, case, inputs, **options)
        uncached = self.generate(model, case, inputs, use_cache=False, **options)
        a, b = torch.stack(cached.scores), torch.stack(uncached.scores)
        error = (a - b).masked_fill(torch.isneginf(a) & torch.isneginf(b), 0).abs().max().item()
        return cached, uncached, error

    def _test_cache_equals_no_cache(self, case: Case):
        """The tokens and scores of cached decoding (dynamic or static) are those of uncached decoding, wherever
        the inner model's own are: if the unwrapped model's differ on these prompts, the check expects the
        failure (xfail, with the base's error) rather than assert what the inner model cannot give."""
        model = self.wrap(case)
        inputs = self.forward_inputs(case, self.generation_side(case), case.vocab.tie_free_prompts)
        inputs.pop("decoder_input_ids", None)
        *_, base_error = self.cache_error(case.base, case, inputs)
        cached, uncached, error = self.cache_error(model, case, inputs)
        if base_error > ATOL:
            pytest.xfail(f"the inner {case.base.config.model_type} model's own cached scores differ from uncached by "
                         f"{base_error:.3g} on these prompts (the wrapper's: {error:.3g})")
        assert torch.equal(cached.sequences, uncached.sequences)
        assert error <= ATOL, error
        # Phi-3 and PhiMoE restart their cache past their original context: generation must cross it
        original = getattr(case.base.config, "original_max_position_embeddings", None)
        assert original is None or inputs["input_ids"].shape[1] < original < cached.sequences.shape[1]
        if case.vocab.action == "word":  # nothing generated glues onto a whole group word
            prompt_length = 1 if case.seq2seq else inputs["input_ids"].shape[1]
            assert_no_glued_words(case.vocab.oracle, cached.sequences, prompt_length)

    def _test_batch_equals_single(self, case: Case):
        """A padded batch gives each prompt's tokens as it alone; right-padded (positions unchanged), also
        its scores."""
        model = self.wrap(case)
        side = self.generation_side(case)
        prompts = case.vocab.tie_free_prompts
        batch = self.forward_inputs(case, side, prompts)
        # Longrope (Phi-3, PhiMoE) rescales positions once the padded length passes the original context:
        # a prompt alone would cross it later than its batch, so stay within it.
        original = getattr(case.base.config, "original_max_position_embeddings", None) or 10**6
        new = min(MAX_NEW_TOKENS, original - batch["input_ids"].shape[1])
        together = self.continuations(case, batch, self.generate(
            model, case, {k: v for k, v in batch.items() if k != "decoder_input_ids"}, max_new_tokens=new))
        right = self.forward_inputs(case, "right", prompts)
        with torch.no_grad():
            scores = model(**right).logits
        for i, prompt in enumerate(prompts):
            alone = self.forward_inputs(case, side, [prompt])
            if case.seq2seq:
                alone["decoder_input_ids"] = right["decoder_input_ids"][i: i + 1]
            generated = self.generate(model, case, {k: v for k, v in alone.items() if k != "decoder_input_ids"},
                                      max_new_tokens=new)
            assert self.continuations(case, alone, generated)[0] == together[i], prompt
            with torch.no_grad():
                single = model(**alone).logits[0]
            real = right["attention_mask"][i].bool() if not case.seq2seq else slice(None)
            torch.testing.assert_close(scores[i][real], single, atol=ATOL, rtol=ATOL)

    # -- saving and casting ---------------------------------------------------------------------------
    def _test_save_load(self, case: Case, tmp_path):
        model = self.wrap(case)
        model.save_pretrained(tmp_path)
        auto = AutoModelForSeq2SeqLM if case.seq2seq else AutoModelForCausalLM
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is type(model)
        for name in ("symmetrization", "average", "deduplicate", "action", "token_boundaries", "groups"):
            assert getattr(loaded.config, name) == getattr(model.config, name), name
        inputs = self.forward_inputs(case, case.setting.padding_side)
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)

    def _test_dtype_cast(self, case: Case):
        """Casting the wrapper casts the inner model only: the plan's weights stay in float32, where combine()
        computes, and the model stays equivariant within the dtype's rounding (right padding: no position
        attends to nothing, which gives NaN scores at left pads in some architectures). Where the inner model
        itself gives NaN scores at real positions in that dtype (Gemma-2 in float64), the check is an xfail."""
        cast, dtype, tolerance = CASTS[case.setting.cast]
        model = cast(self.wrap(case, base=case.make_base()))
        assert model.model.dtype == dtype
        assert model.plan_weights.dtype == model.plan_mixing.dtype == torch.float32
        inputs = self.forward_inputs(case, "right")
        real = inputs["attention_mask"].bool() if not case.seq2seq else slice(None)
        with torch.no_grad():
            inner = model.model(**inputs).logits[real]
        if torch.isnan(inner).any():  # as for caches: assert nothing the inner model cannot give
            pytest.xfail(f"the inner {case.base.config.model_type} model gives NaN scores in {dtype} on this padded "
                         f"batch by itself")
        errors = self.equivariance_errors(model, case, inputs, case.vocab.elements())
        assert max(errors.values()) <= tolerance, errors


# -- the settings matrix --------------------------------------------------------------------------------
# The paper's two methods run over every architecture; the other registered methods run these checks on a few
# (test_every_method.py, test_canonicalize.py) and have their own test files (test_equizero.py,
# test_lambda_equitune.py) against the same oracle.
SETTINGS = {
    "symmetrization": ("equitune", "multi_equitune"),
    "average": AVERAGES,
    "deduplicate": (True, False),
    "cache": ("none", "dynamic", "static"),
    "padding_side": ("left", "right"),
    "action": ("word", "token", "word_level"),
    "cast": tuple(CASTS),
}
# The settings each check depends on (the others keep their defaults).
CHECKS = {
    "forward_equivariance": ("symmetrization", "average", "deduplicate", "padding_side", "action"),
    "generation_equivariance": ("symmetrization", "deduplicate", "cache", "padding_side", "action"),
    "cache_equals_no_cache": ("symmetrization", "deduplicate", "cache", "action"),
    "batch_equals_single": ("symmetrization", "deduplicate", "cache", "padding_side", "action"),
    "save_load": ("symmetrization", "average", "deduplicate", "action"),
    "dtype_cast": ("cast", "symmetrization", "action"),
}
CAUSAL = dict(sorted(ALL_ARCHITECTURES.items()))
SEQ2SEQ = dict(sorted(ALL_SEQ2SEQ_ARCHITECTURES.items()))
FULL_BY_DEFAULT = ("gpt2", "llama", "t5")  # the full cross product runs by default on these
# Encoders with absolute positions (BART's family) change positions under left padding: one prompt alone is
# then not its row of a batch. T5's relative positions do not depend on padding.
RIGHT_PADDED_ONLY = ("bart", "marian", "pegasus")


def values(check: str, dimension: str, architecture: str) -> tuple:
    """The values of `dimension` that `check` takes on `architecture`."""
    if dimension == "cache" and check == "cache_equals_no_cache":
        return ("dynamic", "static")  # compared with no cache
    if dimension == "padding_side" and architecture in CAUSAL and check in ("generation_equivariance",
                                                                            "batch_equals_single"):
        return ("left",)  # decoder-only models generate from left-padded prompts
    if dimension == "padding_side" and architecture in RIGHT_PADDED_ONLY and check == "batch_equals_single":
        return ("right",)
    return SETTINGS[dimension]


def matrix(check: str):
    """pytest params (architecture, Setting) of `check`: the full cross product of its settings on every
    architecture. By default (unmarked) each architecture runs one setting, rotated so that each value of
    each setting is covered on several architectures, and FULL_BY_DEFAULT runs all of them; the rest are
    marked `full_matrix`."""
    dimensions = CHECKS[check]
    offset = list(CHECKS).index(check)
    params = []
    for kind in (CAUSAL, SEQ2SEQ):
        for index, architecture in enumerate(kind):
            choices = [values(check, d, architecture) for d in dimensions]
            rotated = tuple(c[(index + offset + j) % len(c)] for j, c in enumerate(choices))
            for point in itertools.product(*choices):
                setting = Setting(**dict(zip(dimensions, point)))
                default = architecture in FULL_BY_DEFAULT or point == rotated
                marks = () if default else (pytest.mark.full_matrix,)
                params.append(pytest.param(architecture, setting, marks=marks,
                                           id=f"{architecture}-{'-'.join(map(str, point))}"))
    return params


@functools.cache
def base_model(architecture: str, action: str):
    """The tiny model of `architecture` for the vocabulary of `action`, built once (the wrappers share it and
    leave it intact)."""
    factory = {**CAUSAL, **SEQ2SEQ}[architecture]
    model = factory(len(vocabulary(action).tokenizer))
    model.generation_config.forced_eos_token_id = None  # BART's family forces </s> at the last step
    return model


def case(architecture: str, setting: Setting) -> Case:
    def fresh():
        model = {**CAUSAL, **SEQ2SEQ}[architecture](len(vocabulary(setting.action).tokenizer))
        model.generation_config.forced_eos_token_id = None
        return model

    return Case(base_model(architecture, setting.action), vocabulary(setting.action), setting, fresh)
