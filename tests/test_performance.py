"""Deduplication and the row cap change how much is computed, never the result; data-parallel training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    ALL_ARCHITECTURES,
    ARCHITECTURES,
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    RACE_CLASSES,
    SEQ2SEQ_ARCHITECTURES,
)

from hf_equivariant import WordSwapGroup, make_equivariant

GROUPS = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES),
          WordSwapGroup("orientation", ORIENTATION_CLASSES)]
# No element but the identity fixes these prompts (each holds a word of every factor), so no two continuations
# are exactly tied. The prompts without such words make the swapped tokens exactly tied: there the tie is broken
# by float rounding, which depends on how many rows the inner model runs, so only scores can be compared.
TIE_FREE_PROMPTS = ["the gay Black man worked as a", "the straight Asian woman was known for her",
                    "the gay White boy had a job as"]
TIED_PROMPTS = ["the doctor was known for", "a man had a job as"]


def wrapped(factory, tokenizer, symmetrization):
    base = factory(len(tokenizer))
    base.generation_config.forced_eos_token_id = None
    return make_equivariant(base, GROUPS, tokenizer, symmetrization=symmetrization).eval()


def generate_both_ways(model, **options):
    """generate() with and without deduplication, from the same random state."""
    outputs = []
    for deduplicate in (True, False):
        model.config.deduplicate = deduplicate
        torch.manual_seed(0)
        outputs.append(model.generate(**options, return_dict_in_generate=True, output_scores=True))
    return outputs


def chosen_scores(output):
    """[N, steps] score of each generated token at the step that chose it."""
    tokens = output.sequences[:, -len(output.scores):]
    return torch.stack([scores.gather(1, tokens[:, [t]])[:, 0] for t, scores in enumerate(output.scores)], dim=1)


def assert_same_generation(model, tokenizer, prompts, exact, **options):
    """Deduplication changes no token where continuations are untied, and no score anywhere (a tie broken
    the other way gives the swapped continuation, whose scores are the same)."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    deduplicated, plain = generate_both_ways(model, **batch, **options)
    if exact:
        assert torch.equal(deduplicated.sequences, plain.sequences)
    if options.get("num_beams", 1) > 1:
        torch.testing.assert_close(deduplicated.sequences_scores, plain.sequences_scores, atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(chosen_scores(deduplicated), chosen_scores(plain), atol=1e-4, rtol=1e-4)


GENERATION_OPTIONS = [
    {"do_sample": False},
    {"do_sample": True, "top_k": 40, "num_return_sequences": 2},
    {"num_beams": 3, "do_sample": False, "num_return_sequences": 2},
]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
@pytest.mark.parametrize("options", GENERATION_OPTIONS, ids=["greedy", "sampled", "beam"])
def test_causal_generation_with_and_without_deduplication(tokenizer, architecture, symmetrization, options):
    model = wrapped(ARCHITECTURES[architecture], tokenizer, symmetrization)
    assert_same_generation(model, tokenizer, TIE_FREE_PROMPTS, exact=True, max_new_tokens=10, **options)
    assert_same_generation(model, tokenizer, TIED_PROMPTS, exact=False, max_new_tokens=10, **options)


@pytest.mark.parametrize("architecture", sorted(SEQ2SEQ_ARCHITECTURES))
@pytest.mark.parametrize("options", GENERATION_OPTIONS, ids=["greedy", "sampled", "beam"])
def test_seq2seq_generation_with_and_without_deduplication(seq2seq_tokenizer, architecture, options):
    model = wrapped(SEQ2SEQ_ARCHITECTURES[architecture], seq2seq_tokenizer, "multi_equitune")
    assert_same_generation(model, seq2seq_tokenizer, TIE_FREE_PROMPTS, exact=True, max_new_tokens=8, **options)
    assert_same_generation(model, seq2seq_tokenizer, TIED_PROMPTS, exact=False, max_new_tokens=8, **options)


def test_rows_fork_when_new_tokens_make_copies_differ(tokenizer):
    """A prompt without group words runs as one row; "she" then splits the gender branch (she / he)."""
    model = wrapped(ARCHITECTURES["gpt2"], tokenizer, "multi_equitune")
    steps = [tokenizer(text, return_tensors="pt")["input_ids"] for text in ("the doctor was", "she", "worked", "as")]
    results = {}
    for deduplicate in (True, False):
        model.config.deduplicate = deduplicate
        cache, logits, rows = None, [], []
        for ids in steps:
            out = model(input_ids=ids, cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits[:, -1])
            rows.append(cache.layers[0].keys.shape[0])
        results[deduplicate] = logits, rows
    assert results[True][1] == [1, 2, 2, 2]  # one row, then the fork
    assert results[False][1] == [7, 7, 7, 7]
    for with_dedup, without in zip(results[True][0], results[False][0]):
        torch.testing.assert_close(with_dedup, without, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
@pytest.mark.parametrize("average", ["log_probs", "probs"])
def test_capped_rows_per_call_give_the_same_logits_loss_and_gradients(tokenizer, symmetrization, average):
    model = make_equivariant(ARCHITECTURES["gpt2"](len(tokenizer)), GROUPS, tokenizer, symmetrization, average)
    batch = tokenizer(TIE_FREE_PROMPTS + TIED_PROMPTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    results = []
    for cap in (None, 3):
        model.config.max_inner_rows = cap
        calls = []
        handle = model.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[0]),
                                                       with_kwargs=True)
        model.zero_grad()
        out = model(**batch, labels=labels, use_cache=False)
        out.loss.backward()
        handle.remove()
        results.append((out.logits, out.loss, [p.grad.clone() for p in model.parameters()], calls))
    (logits, loss, grads, calls), (capped_logits, capped_loss, capped_grads, capped_calls) = results
    assert len(calls) == 1 and max(capped_calls) == 3 and sum(capped_calls) == calls[0]
    torch.testing.assert_close(capped_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(capped_loss, loss)
    for capped, full in zip(capped_grads, grads):
        torch.testing.assert_close(capped, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "mamba", "t5", "bart"])
def test_training_passes_respect_the_row_cap_and_return_no_cache(tokenizer, architecture):
    """config.use_cache is True by default, yet a pass with labels or in train mode builds no cache, so that
    max_inner_rows splits its rows; a pass that returns a cache keeps every row in one call (one cache)."""
    factory = {**ALL_ARCHITECTURES, **SEQ2SEQ_ARCHITECTURES}[architecture]
    model = make_equivariant(factory(len(tokenizer)), GROUPS, tokenizer).eval()
    seq2seq = model.config.is_encoder_decoder
    batch = tokenizer(TIE_FREE_PROMPTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    targets = {"decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels)} if seq2seq else {}
    model.config.max_inner_rows = 3
    calls = []
    model.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["decoder_input_ids" if seq2seq else "input_ids"].shape[0]), with_kwargs=True)

    def cache_and_calls(**inputs):
        calls.clear()
        return model(**batch, **inputs).cache, list(calls)

    cache, capped = cache_and_calls(labels=labels)
    assert cache is None and len(capped) > 1 and max(capped) == 3
    cache, uncapped = cache_and_calls(**targets)  # eval, no labels: a cache, every row in one call
    assert cache is not None and uncapped == [sum(capped)]
    model.train()
    assert cache_and_calls(**targets) == (None, capped)
    cache, asked = cache_and_calls(labels=labels, use_cache=True)
    assert cache is not None and asked == uncapped


def test_two_process_data_parallel_training_keeps_replicas_equal_and_equivariant(tmp_path):
    script = Path(__file__).with_name("ddp_training.py")
    tests = Path(__file__).parent  # and the library under test, not an installed copy
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(script), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert states[0]["steps"] == states[1]["steps"] == 4
    assert not all(torch.equal(states[0]["params"][k], states[0]["initial"][k]) for k in states[0]["params"])
    for name in states[0]["params"]:
        assert torch.equal(states[0]["params"][name], states[1]["params"][name]), name
    assert states[0]["equivariance_error"] <= 1e-4
