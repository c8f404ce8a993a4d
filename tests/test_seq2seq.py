"""The seq2seq wrapper on tiny T5 and BART models: the encoder's copies, beam search, per-layer outputs, loss, loading.

Equivariance (teacher-forced and generated), cache == no cache, batch == single, save/load and dtype casts on
every seq2seq architecture are the shared tester's (testing_common.py, run by test_common.py).
"""

import pytest
import torch
from conftest import PROMPTS, RACE_CLASSES, wrap
from transformers import AutoModelForSeq2SeqLM

from hf_equivariant import EquivariantModelForSeq2SeqLM, WordSwapGroup

TARGETS = ["a man was a doctor", "she had her", "the White boy"]


@pytest.fixture
def batch(seq2seq_tokenizer):
    return seq2seq_tokenizer(PROMPTS, text_target=TARGETS, return_tensors="pt", padding=True)


@pytest.mark.parametrize("deduplicate, rows", [(False, 5 * 3), (True, 4 * 3)])
def test_generate_runs_the_encoder_once_on_the_copies(seq2seq_model, seq2seq_tokenizer, batch, deduplicate, rows):
    model = wrap(seq2seq_model, seq2seq_tokenizer)  # multi_equitune: 2 + 3 copies, 4 distinct for each prompt
    model.config.deduplicate = deduplicate
    seen = []
    handle = model.model.get_encoder().register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4)
    handle.remove()
    assert seen == [rows]


def test_beam_search_with_cache_equals_without(seq2seq_model, seq2seq_tokenizer, batch):
    model = wrap(seq2seq_model, seq2seq_tokenizer)
    options = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                   num_beams=3, num_return_sequences=2, do_sample=False)
    cached = model.generate(**options)
    assert cached.shape[0] == 2 * len(PROMPTS)
    assert torch.equal(cached, model.generate(**options, use_cache=False))


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
def test_hidden_states_and_attentions_are_those_of_copy_zero(seq2seq_model, seq2seq_tokenizer, batch, symmetrization):
    """Encoder and decoder hidden states, self- and cross-attentions of copy 0 (the input for equitune; race
    canonicalised for multi_equitune over (gender, race)), one per input row."""
    model = wrap(seq2seq_model, seq2seq_tokenizer, symmetrization=symmetrization)
    flags = dict(output_hidden_states=True, output_attentions=True)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(batch["labels"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_ids,
                **flags)
    canonical = (lambda texts: texts) if symmetrization == "equitune" else (
        lambda texts: [t.replace("White", "Black").replace("Asian", "Black") for t in texts])
    copy_zero = seq2seq_tokenizer(canonical(PROMPTS), text_target=canonical(TARGETS), return_tensors="pt",
                                  padding=True)
    expected = seq2seq_model(input_ids=copy_zero["input_ids"], attention_mask=copy_zero["attention_mask"],
                             decoder_input_ids=model.prepare_decoder_input_ids_from_labels(copy_zero["labels"]),
                             **flags)
    names = ("encoder_hidden_states", "encoder_attentions", "decoder_hidden_states", "decoder_attentions",
             "cross_attentions")
    for name in names:
        assert getattr(out, name) is not None and len(getattr(out, name)) == len(getattr(expected, name)), name
        for mine, reference in zip(getattr(out, name), getattr(expected, name)):
            assert mine.shape[0] == len(PROMPTS)
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)
    generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=2,
                               return_dict_in_generate=True, **flags)
    assert all(h.shape[0] == len(PROMPTS) for h in generated.encoder_hidden_states + generated.encoder_attentions)
    assert all(h.shape[0] == len(PROMPTS) for step in generated.decoder_hidden_states for h in step)


def test_loss_is_the_unshifted_cross_entropy_of_the_symmetrised_distribution(seq2seq_model, seq2seq_tokenizer,
                                                                             batch):
    model = wrap(seq2seq_model, seq2seq_tokenizer)
    labels = batch["labels"].masked_fill(batch["labels"] == seq2seq_tokenizer.pad_token_id, -100)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    log_probs = out.logits.log_softmax(-1)
    picked = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    expected = -(picked * (labels != -100)).sum() / (labels != -100).sum()
    torch.testing.assert_close(out.loss, expected)


def test_saved_card_names_the_seq2seq_pipeline(seq2seq_model, seq2seq_tokenizer, tmp_path):
    """(Identical logits after save/load: the shared tester, test_common.py.)"""
    wrap(seq2seq_model, seq2seq_tokenizer).save_pretrained(tmp_path)
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path)) is EquivariantModelForSeq2SeqLM
    assert "pipeline_tag: text2text-generation" in (tmp_path / "README.md").read_text()
    assert "AutoModelForSeq2SeqLM.from_pretrained" in (tmp_path / "README.md").read_text()


def test_from_pretrained_base_checkpoint(seq2seq_model, seq2seq_tokenizer, batch, tmp_path):
    seq2seq_model.save_pretrained(tmp_path)
    seq2seq_tokenizer.save_pretrained(tmp_path)
    loaded = EquivariantModelForSeq2SeqLM.from_pretrained(tmp_path, groups=[WordSwapGroup("race", RACE_CLASSES)])
    assert loaded.num_copies == 3
    out = loaded.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3)
    assert out.shape[0] == len(PROMPTS)


def test_embeddings_are_refused(seq2seq_model, seq2seq_tokenizer):
    model = wrap(seq2seq_model, seq2seq_tokenizer)
    with pytest.raises(ValueError, match="acts on token ids"):
        model(inputs_embeds=torch.zeros(1, 2, 32), decoder_input_ids=torch.zeros(1, 1, dtype=torch.long))
