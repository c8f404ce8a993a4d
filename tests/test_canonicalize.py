"""canonicalize: frame canonicalisation, y(x) = mean over the frame F(x) of g^-1 . M(g . x), checked against the
frame computed here per prefix from the word lists, exact for every element, one inner row per input in
forward and generation."""

import pytest
import torch
from conftest import (
    BPE_GENDER_CLASSES,
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    ActionOracle,
    all_elements,
    assert_word_equivariant,
    bpe_tokenizer,
    element_permutation,
    tiny_gpt2,
    tiny_t5,
)

from hf_equivariant import WordSwapGroup, make_equivariant

CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES]
# Prompts fixed by some elements: no race word (its frame holds all race elements), no group word at all.
FIXED_PROMPTS = PROMPTS + ["the man was known for his", "the doctor was a kind"]


def wrap(base, tokenizer, **options):
    groups = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
    return make_equivariant(base, groups, tokenizer=tokenizer, symmetrization="canonicalize", **options).eval()


def class_of(tokenizer):
    """Token -> (factor, class) for every form of a listed word that the group moves."""
    vocab, classes_of = tokenizer.get_vocab(), {}
    for f, classes in enumerate(CLASS_LISTS):
        for form in (str, lambda w: w[0].upper() + w[1:]):
            for j in range(len(classes[0])):
                column = [form(words[j]) for words in classes]
                if all(w in vocab for w in column):
                    classes_of.update({vocab[w]: (f, c) for c, w in enumerate(column)})
    return classes_of


def naive_canonicalize(base, ids, mask, tokenizer, average_frame=True):
    """Per row and position t: F_t = the elements g whose copy g.x<=t has the least class sequence (factor by
    factor: first-seen classes to 0, 1, ...); y_t = mean_{g in F_t} g^-1 . log_softmax(M(g* . x))[t], g* in
    F_T. With average_frame=False only g* itself is read (the negative control)."""
    elements = all_elements(CLASS_LISTS)
    perms = [element_permutation(tokenizer, CLASS_LISTS, g) for g in elements]
    classes_of = class_of(tokenizer)
    out = torch.empty(*ids.shape, len(tokenizer))
    for b, row in enumerate(ids.tolist()):
        sequences = [[classes_of.get(t, (-1, -1)) for t in p[torch.tensor(row)].tolist()] for p in perms]
        best = min(range(len(elements)), key=lambda k: sequences[k])
        z = base(input_ids=perms[best][ids[b:b + 1]], attention_mask=mask[b:b + 1]).logits[0].log_softmax(-1)
        for t in range(len(row)):
            least = min(s[:t + 1] for s in sequences)
            frame = [k for k in range(len(elements)) if sequences[k][:t + 1] == least] if average_frame else [best]
            out[b, t] = torch.stack([z[t][perms[k]] for k in frame]).mean(0)
    return out


def test_matches_the_frame_formula_and_is_equivariant_for_every_element(base_model, tokenizer):
    model = wrap(base_model, tokenizer)
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**batch).logits
        expected = naive_canonicalize(base_model, batch["input_ids"], batch["attention_mask"], tokenizer)
        torch.testing.assert_close(reference, expected, atol=1e-4, rtol=1e-4)
        errors, control_errors = [], []
        control = naive_canonicalize(base_model, batch["input_ids"], batch["attention_mask"], tokenizer, False)
        for g in all_elements(CLASS_LISTS):
            p = element_permutation(tokenizer, CLASS_LISTS, g)
            moved = dict(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"])
            errors.append((model(**moved).logits[..., p] - reference).abs().max().item())
            control_moved = naive_canonicalize(base_model, *moved.values(), tokenizer, average_frame=False)
            control_errors.append((control_moved[..., p] - control).abs().max().item())
    assert len(errors) == 6 and max(errors) <= 1e-4
    assert max(control_errors) > 1e-2  # reading one element of the frame, not all of it, is not equivariant


def test_one_inner_row_per_input_in_forward_and_generation(tokenizer):
    base = tiny_gpt2(len(tokenizer))
    model = wrap(base, tokenizer)
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    rows = []
    handle = base.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    with torch.no_grad():
        model(**batch)
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
        beams = model.generate(**batch, max_new_tokens=6, do_sample=False, num_beams=3)
    handle.remove()
    assert model.num_copies == 6
    assert rows == [len(FIXED_PROMPTS)] * 7 + [3 * len(FIXED_PROMPTS)] * 6  # forward, 6 greedy steps, 6 beam steps
    assert torch.equal(out, model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False))
    assert torch.equal(beams, model.generate(**batch, max_new_tokens=6, do_sample=False, num_beams=3,
                                             use_cache=False))
    for g in all_elements(CLASS_LISTS):
        p = element_permutation(tokenizer, CLASS_LISTS, g)
        moved = model.generate(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"],
                               max_new_tokens=6, do_sample=False)
        assert torch.equal(moved, p[out]), g


def test_word_action_with_a_subword_tokenizer_is_exact_for_every_element():
    bpe = bpe_tokenizer()
    class_lists = [BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]
    groups = [WordSwapGroup(f"f{i}", classes) for i, classes in enumerate(class_lists)]
    model = make_equivariant(tiny_gpt2(len(bpe)), groups, bpe, symmetrization="canonicalize").eval()
    prompts = ["Hispanics met the Black man", "the malevolent Blackstone saw her son", "Man, he said. His White son"]
    ids = bpe(prompts, return_tensors="pt", padding=True)["input_ids"]
    oracle = ActionOracle(bpe, class_lists, len(bpe))
    assert max(assert_word_equivariant(model, oracle, ids, all_elements(class_lists))) <= 1e-4


def test_continuing_a_cache_needs_the_history_and_seq2seq_is_refused(tokenizer, seq2seq_tokenizer):
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        cache = model(**batch, use_cache=True).cache
        with pytest.raises(ValueError, match="pass history_ids"):
            model(input_ids=batch["input_ids"][:, -1:], cache=cache)
    with pytest.raises(ValueError, match="supports causal LMs only; choose one of .*'equitune'"):
        wrap(tiny_t5(len(seq2seq_tokenizer)), seq2seq_tokenizer)
