"""canonicalize: frame canonicalisation, y(x) = mean over the frame F(x) of g^-1 . M(g . x), checked against the
frame computed here per prefix from the word lists, exact for every element, one inner row per input in
forward and generation. For seq2seq models the frame at decoder position t is that of the encoder ids followed
by the decoder ids up to t (the output there depends on both); the shared tester checks it against the word and
token oracles on GPT-2, T5 and BART, with and without caches (tests/test_every_method.py)."""

import pytest
import torch
from conftest import (
    BPE_GENDER_CLASSES,
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    SEQ2SEQ_ARCHITECTURES,
    ActionOracle,
    all_elements,
    assert_word_equivariant,
    bpe_tokenizer,
    causal_token_errors,
    element_permutation,
    sampling_errors,
    seq2seq_token_errors,
    tiny_gpt2,
    tiny_t5,
    token_generation_mismatches,
)
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_equivariant import EquivariantModelForSeq2SeqLM, WordSwapGroup, make_equivariant

CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES]
# Prompts fixed by some elements: no race word (its frame holds all race elements), no group word at all.
FIXED_PROMPTS = PROMPTS + ["the man was known for his", "the doctor was a kind"]
# Decoder inputs: the last two bring the words that the last two prompts lack, so that the frame narrows
# inside the decoder (at "White" and at "he", then "Black").
TARGETS = ["a man was", "she had her", "the White boy", "the White person", "he was Black"]


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


def seq2seq_inputs(tokenizer, prompts=FIXED_PROMPTS, targets=TARGETS):
    batch = tokenizer(prompts, text_target=targets, return_tensors="pt", padding=True)
    start = torch.zeros_like(batch["labels"][:, :1])  # the tiny T5's and the word tokenizer's <pad> (id 0)
    return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                decoder_input_ids=torch.cat([start, batch["labels"][:, :-1]], dim=1))


def naive_canonicalize(base, tokenizer, inputs, average_frame=True):
    """Per row and position t: F_t = the elements g whose copy of the sequence up to t (for seq2seq: all encoder
    ids, then the decoder ids up to t) has the least class sequence (factor by factor: first-seen classes to 0,
    1, ...); y_t = mean_{g in F_t} g^-1 . log_softmax(M(g* . x))[t], g* in F_T. With average_frame=False only g*
    itself is read (the negative control)."""
    seq2seq = "decoder_input_ids" in inputs
    ids = inputs["decoder_input_ids" if seq2seq else "input_ids"]
    elements = all_elements(CLASS_LISTS)
    perms = [element_permutation(tokenizer, CLASS_LISTS, g) for g in elements]
    classes_of = class_of(tokenizer)
    out = torch.empty(*ids.shape, len(tokenizer))
    for b, row in enumerate(ids.tolist()):
        before = inputs["input_ids"][b].tolist() if seq2seq else []
        sequences = [[classes_of.get(t, (-1, -1)) for t in p[torch.tensor(before + row)].tolist()] for p in perms]
        best = min(range(len(elements)), key=lambda k: sequences[k])
        moved = {key: perms[best][value[b:b + 1]] if key.endswith("input_ids") else value[b:b + 1]
                 for key, value in inputs.items()}
        z = base(**moved).logits[0].log_softmax(-1)
        for t in range(len(row)):
            least = min(s[:len(before) + t + 1] for s in sequences)
            frame = ([k for k in range(len(elements)) if sequences[k][:len(before) + t + 1] == least]
                     if average_frame else [best])
            out[b, t] = torch.stack([z[t][perms[k]] for k in frame]).mean(0)
    return out


def control_errors(base, tokenizer, inputs):
    """The negative control's error per element: reading only g*, not the whole frame."""
    control = naive_canonicalize(base, tokenizer, inputs, average_frame=False)
    errors = []
    for g in all_elements(CLASS_LISTS):
        p = element_permutation(tokenizer, CLASS_LISTS, g)
        moved = {key: p[value] if key.endswith("input_ids") else value for key, value in inputs.items()}
        errors.append((naive_canonicalize(base, tokenizer, moved, False)[..., p] - control).abs().max().item())
    return errors


def test_matches_the_frame_formula_and_is_equivariant_for_every_element(base_model, tokenizer):
    model = wrap(base_model, tokenizer)
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = naive_canonicalize(base_model, tokenizer, dict(batch))
        torch.testing.assert_close(model(**batch).logits, expected, atol=1e-4, rtol=1e-4)
        errors = causal_token_errors(model, tokenizer, CLASS_LISTS, batch)
        control = control_errors(base_model, tokenizer, dict(batch))
    assert len(errors) == 6 and max(errors) <= 1e-4
    assert max(control) > 1e-2  # reading one element of the frame, not all of it, is not equivariant


@pytest.mark.parametrize("architecture", sorted(SEQ2SEQ_ARCHITECTURES))
def test_seq2seq_matches_the_frame_of_encoder_and_decoder_ids_and_is_equivariant(seq2seq_tokenizer, architecture):
    """Prompts without a race word or without any group word, and targets that bring them: the frame narrows
    inside the decoder; the stabiliser before that is averaged over."""
    base = SEQ2SEQ_ARCHITECTURES[architecture](len(seq2seq_tokenizer))
    model = wrap(base, seq2seq_tokenizer)
    inputs = seq2seq_inputs(seq2seq_tokenizer)
    with torch.no_grad():
        expected = naive_canonicalize(base, seq2seq_tokenizer, inputs)
        torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        control = control_errors(base, seq2seq_tokenizer, inputs)
    errors = seq2seq_token_errors(model, seq2seq_tokenizer, CLASS_LISTS, FIXED_PROMPTS, TARGETS)
    assert len(errors) == 6 and max(errors) <= 1e-4
    assert max(control) > 1e-2
    # and the unwrapped model is not equivariant
    assert max(seq2seq_token_errors(base, seq2seq_tokenizer, CLASS_LISTS, FIXED_PROMPTS, TARGETS)) > 1e-2


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_one_inner_row_per_input_in_forward_and_generation(tokenizer, cache):
    """Deduplication finds the canonical copies equal; a static cache, which cannot deduplicate (its rows are
    fixed), holds copy 0's row of each input, which every copy row of it reads."""
    base = tiny_gpt2(len(tokenizer))
    model = wrap(base, tokenizer)
    batch = tokenizer(FIXED_PROMPTS, return_tensors="pt", padding=True)
    rows = []
    handle = base.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    greedy = dict(max_new_tokens=6, do_sample=False, cache_implementation=None if cache == "dynamic" else cache)
    with torch.no_grad():
        model(**batch)
        out = model.generate(**batch, **greedy)
        beams = model.generate(**batch, **greedy, num_beams=3)
    handle.remove()
    assert model.num_copies == 6 and model.inner_passes == 1  # what the CLI, the reports and the card print
    assert rows == [len(FIXED_PROMPTS)] * 7 + [3 * len(FIXED_PROMPTS)] * 6  # forward, 6 greedy steps, 6 beam steps
    uncached = dict(max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(out, model.generate(**batch, **uncached))
    assert torch.equal(beams, model.generate(**batch, **uncached, num_beams=3))
    assert token_generation_mismatches(model, tokenizer, CLASS_LISTS, batch, **greedy) == []
    assert token_generation_mismatches(model, tokenizer, CLASS_LISTS, batch, **greedy, num_beams=3) == []


def test_word_action_with_a_subword_tokenizer_is_exact_for_every_element():
    bpe = bpe_tokenizer()
    class_lists = [BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]
    groups = [WordSwapGroup(f"f{i}", classes) for i, classes in enumerate(class_lists)]
    model = make_equivariant(tiny_gpt2(len(bpe)), groups, bpe, symmetrization="canonicalize").eval()
    prompts = ["Hispanics met the Black man", "the malevolent Blackstone saw her son", "Man, he said. His White son"]
    ids = bpe(prompts, return_tensors="pt", padding=True)["input_ids"]
    oracle = ActionOracle(bpe, class_lists, len(bpe))
    assert max(assert_word_equivariant(model, oracle, ids, all_elements(class_lists))) <= 1e-4


def test_continuing_a_cache_needs_the_history_and_the_encoder_copies(tokenizer, seq2seq_tokenizer):
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    seq2seq = wrap(tiny_t5(len(seq2seq_tokenizer)), seq2seq_tokenizer)
    inputs = seq2seq_inputs(seq2seq_tokenizer)
    with torch.no_grad():
        cache = model(**batch, use_cache=True).cache
        with pytest.raises(ValueError, match="pass history_ids"):
            model(input_ids=batch["input_ids"][:, -1:], cache=cache)
        encoded = seq2seq.get_encoder()(inputs["input_ids"], inputs["attention_mask"])
        assert torch.equal(seq2seq(**inputs).logits,
                           seq2seq(encoder_outputs=encoded, **{k: v for k, v in inputs.items() if k != "input_ids"}
                                   ).logits)
        with pytest.raises(ValueError, match="reads the encoder ids of every copy: pass input_ids, or encoder_outputs"):
            seq2seq(encoder_outputs=(encoded.last_hidden_state,), decoder_input_ids=inputs["decoder_input_ids"])


def counted_seq2seq_rows(base):
    """Lists that forward hooks fill with the rows of every inner encoder call and every inner decoder call."""
    encoder_rows, decoder_rows = [], []
    base.get_encoder().register_forward_pre_hook(
        lambda m, a, kw: encoder_rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    base.register_forward_pre_hook(lambda m, a, kw: decoder_rows.append(kw["decoder_input_ids"].shape[0]),
                                   with_kwargs=True)
    return encoder_rows, decoder_rows


@pytest.mark.parametrize("architecture", sorted(SEQ2SEQ_ARCHITECTURES))
def test_seq2seq_runs_one_encoder_and_one_decoder_row_per_input(seq2seq_tokenizer, architecture):
    """Also for prompts without a word of some factor (equal copies) and in every greedy and beam step; the same
    tokens without a cache."""
    base = SEQ2SEQ_ARCHITECTURES[architecture](len(seq2seq_tokenizer))
    base.generation_config.forced_eos_token_id = None
    model = wrap(base, seq2seq_tokenizer)
    inputs = seq2seq_inputs(seq2seq_tokenizer)
    prompts = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    encoder_rows, decoder_rows = counted_seq2seq_rows(base)
    batch = len(FIXED_PROMPTS)
    steps = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        model(**inputs)
        assert (encoder_rows, decoder_rows) == ([batch], [batch])
        greedy = model.generate(**prompts, **steps)
        assert (encoder_rows[1:], decoder_rows[1:]) == ([batch], [batch] * 6)
        beams = model.generate(**prompts, **steps, num_beams=3)
        assert (encoder_rows[2:], decoder_rows[7:]) == ([batch], [3 * batch] * 6)
        static = model.generate(**prompts, **steps, num_beams=3, cache_implementation="static")
        assert (encoder_rows[3:], decoder_rows[13:]) == ([batch], [3 * batch] * 6)  # static: a row per input
        every = wrap(base, seq2seq_tokenizer, deduplicate=False)
        every(**inputs)
        assert (encoder_rows[4:], decoder_rows[19:]) == ([6 * batch], [6 * batch])  # all copies, all equal
    assert (model.inner_passes, every.inner_passes) == (1, 6)  # what the CLI, the reports and the card print
    assert model.num_copies == 6
    assert torch.equal(greedy, model.generate(**prompts, **steps, use_cache=False))
    assert torch.equal(beams, model.generate(**prompts, **steps, num_beams=3, use_cache=False))
    assert torch.equal(static, beams)
    torch.testing.assert_close(every(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", sorted(SEQ2SEQ_ARCHITECTURES))
def test_seq2seq_beam_search_and_sampling_are_equivariant(seq2seq_tokenizer, architecture):
    """Beams: generate(g.x) == g.generate(x) for every element (PROMPTS hold a word of every factor, so no
    element but the identity fixes them and nothing ties). Sampling: along each sampled sequence y, the
    distribution every step draws from (the logits generate() returns, cached) is, read through g, the wrapper's
    distribution at g.y given g.x, for every element g: p(g.y | g.x) = p(y | x), so generate(g.x) samples g.y
    as often as generate(x) samples y. With a seed, a cache changes no draw."""
    base = SEQ2SEQ_ARCHITECTURES[architecture](len(seq2seq_tokenizer))
    base.generation_config.forced_eos_token_id = None
    model = wrap(base, seq2seq_tokenizer)
    batch = seq2seq_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    beams = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2)
    sampling = dict(max_new_tokens=6, min_new_tokens=6, do_sample=True, top_k=0, num_return_sequences=2,
                    return_dict_in_generate=True, output_logits=True)
    assert token_generation_mismatches(model, seq2seq_tokenizer, CLASS_LISTS, batch, **beams) == []
    assert token_generation_mismatches(base, seq2seq_tokenizer, CLASS_LISTS, batch, **beams) != []  # the unwrapped
    errors = sampling_errors(model, seq2seq_tokenizer, CLASS_LISTS, batch, sampling)
    assert len(errors) == 6 and max(errors) <= 1e-4, errors


def test_seq2seq_trainer_steps_keep_it_exact_and_it_saves_and_loads(seq2seq_tokenizer, tmp_path):
    base = tiny_t5(len(seq2seq_tokenizer))
    model = wrap(base, seq2seq_tokenizer)
    before = {name: value.clone() for name, value in base.named_parameters()}
    data = Dataset.from_dict({"prompt": FIXED_PROMPTS, "target": TARGETS}).map(
        lambda x: seq2seq_tokenizer(x["prompt"], text_target=x["target"]), remove_columns=["prompt", "target"])
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=5, max_steps=2,
                                    learning_rate=1e-2, report_to=[], use_cpu=True, seed=0, save_strategy="no",
                                    disable_tqdm=True)
    result = Seq2SeqTrainer(model=model, args=args, train_dataset=data,
                            data_collator=DataCollatorForSeq2Seq(seq2seq_tokenizer, model=model)).train()
    model.eval()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(value, before[name]) for name, value in base.named_parameters())
    errors = seq2seq_token_errors(model, seq2seq_tokenizer, CLASS_LISTS, FIXED_PROMPTS, TARGETS)
    assert len(errors) == 6 and max(errors) <= 1e-4
    model.save_pretrained(tmp_path / "saved")
    loaded = EquivariantModelForSeq2SeqLM.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config.symmetrization == "canonicalize"
    inputs = seq2seq_inputs(seq2seq_tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert "Equivariance with Learned Canonicalization Functions" in (tmp_path / "saved" / "README.md").read_text()
