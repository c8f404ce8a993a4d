"""The methods beyond the paper's two (equizero, multi_equizero, lambda_equitune, multi_lambda_equitune,
canonicalize) through the shared tester, and every built-in method through generate()'s beams and sampling and
through Trainer.

test_common.py runs equitune and multi_equitune over every architecture and setting. Here each of the other
methods runs the shared tester's checks (forward equivariance, greedy generation, cache == no cache, save/load:
every element against `ActionOracle`, the unwrapped model as negative control): the equizero and lambda methods on
a causal and a seq2seq model with a static cache, and on two more with a dynamic cache or none, with the word
action, the token action and the word-level tokenizer; canonicalize on GPT-2, T5 and BART with every action and
cache (its seq2seq frame reads the encoder and the decoder ids). The lambda methods
run with a random head (`random_head`), so their weights differ from their uniform methods' and from copy to copy.

Then, for every built-in method, on a causal and a seq2seq model (word-level tokenizer, token action):
- beam search: generate(g.x) == g.generate(x) for every element g;
- sampling: along each sampled sequence y, every step's distribution (the logits generate() returns, cached)
  is, read through g, the wrapper's distribution at g.y given g.x: p(g.y | g.x) = p(y | x), so generate(g.x)
  samples g.y as often as generate(x) samples y; with a seed, a cache changes no draw;
- Trainer (Seq2SeqTrainer for seq2seq) steps that move the inner model (and the lambda head; `trainable` says
  which methods have one) keep every element exact, also on prompts that other elements fix (equizero's ties).
"""

import dataclasses

import pytest
import torch
from conftest import (
    GENDER_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    causal_token_errors,
    sampling_errors,
    seq2seq_token_errors,
    tiny_gpt2,
    tiny_t5,
    token_generation_mismatches,
    word_tokenizer,
    wrap,
)
from datasets import Dataset
from testing_common import EquivariantCommonTester, Setting, case, random_head
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
)

from hf_equivariant.methods import SYMMETRIZATIONS, get_symmetrization

OTHER_METHODS = ("equizero", "multi_equizero", "lambda_equitune", "multi_lambda_equitune")
BUILT_IN = ("equitune", "multi_equitune", *OTHER_METHODS, "canonicalize")
CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES]
TARGETS = ["she was a doctor", "he had a job as a nurse", "the White woman"]
# prompts that elements fix: no group word (every element), a gender word only (the race elements)
FIXED_PROMPTS = ["a doctor was known for", "the man worked as a"]
# (architecture, label, action, cache, deduplicate, padding side): a static cache on a causal and on a seq2seq
# model, each action and the other caches once
CASES = [("gpt2", "word-static", "word", "static", True, "left"),
         ("t5", "word-static", "word", "static", True, "right"),
         ("llama", "token-dynamic-nodedup", "token", "dynamic", False, "left"),
         ("bart", "word_level-none", "word_level", "none", True, "right")]
# canonicalize's own cases: its frame at a seq2seq decoder position reads the encoder and the decoder ids, so each
# seq2seq architecture gets every action and cache
CANONICALIZE_CASES = [(architecture, label, action, cache, deduplicate, side)
                      for architecture in ("bart", "gpt2", "t5")
                      for label, action, cache, deduplicate, side in [
                          ("word-dynamic", "word", "dynamic", True, "right"),
                          ("token-static", "token", "static", True, "left"),
                          ("word_level-none-nodedup", "word_level", "none", False, "right")]]
TESTER_CASES = [pytest.param(architecture, Setting(symmetrization=method, action=action, cache=cache,
                                                   deduplicate=deduplicate, padding_side=side),
                             id=f"{method}-{architecture}-{label}")
                for method, cases in [*[(method, CASES) for method in OTHER_METHODS],
                                      ("canonicalize", CANONICALIZE_CASES)]
                for architecture, label, action, cache, deduplicate, side in cases]


def test_the_built_in_methods_are_registered():
    assert set(BUILT_IN) <= set(SYMMETRIZATIONS)


class TestEveryMethodWithTheSharedTester(EquivariantCommonTester):
    def wrap(self, case, base=None):
        return random_head(super().wrap(case, base))

    @pytest.mark.parametrize("architecture, setting", TESTER_CASES)
    def test_forward_equivariance(self, architecture, setting):
        self._test_forward_equivariance(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", TESTER_CASES)
    def test_generation_equivariance(self, architecture, setting):
        self._test_generation_equivariance(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", TESTER_CASES)
    def test_cache_equals_no_cache(self, architecture, setting):
        if setting.cache == "none":
            setting = dataclasses.replace(setting, cache="dynamic")
        self._test_cache_equals_no_cache(case(architecture, setting))

    @pytest.mark.parametrize("architecture, setting", TESTER_CASES)
    def test_save_load(self, architecture, setting, tmp_path):
        self._test_save_load(case(architecture, setting), tmp_path)


@pytest.fixture(scope="module")
def tokenizers():
    return {"causal": word_tokenizer(), "seq2seq": word_tokenizer(padding_side="right")}


def wrapped(kind, tokenizer, method):
    base = (tiny_gpt2 if kind == "causal" else tiny_t5)(len(tokenizer))
    return random_head(wrap(base, tokenizer, symmetrization=method)), base


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
@pytest.mark.parametrize("method", BUILT_IN)
def test_beam_search_and_sampling_are_equivariant(tokenizers, method, kind):
    tokenizer = tokenizers[kind]
    model, base = wrapped(kind, tokenizer, method)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # a word of each factor: only the identity fixes
    steps = dict(max_new_tokens=6, min_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    beams = dict(**steps, do_sample=False, num_beams=3, num_return_sequences=2)
    assert token_generation_mismatches(model, tokenizer, CLASS_LISTS, batch, **beams) == []
    assert token_generation_mismatches(base, tokenizer, CLASS_LISTS, batch, **beams) != []  # the unwrapped model
    sampling = dict(**steps, do_sample=True, top_k=0, num_return_sequences=2, return_dict_in_generate=True,
                    output_logits=True)
    errors = sampling_errors(model, tokenizer, CLASS_LISTS, batch, sampling)
    assert len(errors) == 6 and max(errors) <= 1e-4, errors
    # the unwrapped model: its own draws are read back at the identity (so the teacher forcing is aligned), and
    # every other element misses them
    identity, *others = sampling_errors(base, tokenizer, CLASS_LISTS, batch, sampling)
    assert identity <= 1e-4 and min(others) > 1e-4, (identity, others)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
@pytest.mark.parametrize("method", BUILT_IN)
def test_trainer_steps_keep_every_element_exact(method, kind, tmp_path):
    """Two steps with the inner model (and any head: the method says whether it has one) trainable, then every
    element against the oracle, on prompts that only the identity fixes and on prompts that other elements fix."""
    tokenizer = word_tokenizer(padding_side="right")  # training batches: positions do not shift with the padding
    model, base = wrapped(kind, tokenizer, method)
    model.train()
    before = {name: value.clone() for name, value in model.named_parameters()}
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=2, learning_rate=1e-2,
                   report_to=[], use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True)
    if kind == "seq2seq":
        data = Dataset.from_dict({"prompt": PROMPTS, "target": TARGETS}).map(
            lambda x: tokenizer(x["prompt"], text_target=x["target"]), remove_columns=["prompt", "target"])
        trainer = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**options), train_dataset=data,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    else:
        data = Dataset.from_dict({"text": [f"{p} {t}" for p, t in zip(PROMPTS, TARGETS)]}).map(
            lambda x: tokenizer(x["text"]), remove_columns=["text"])
        trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=data,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
    model.eval()
    moved = {name for name, value in model.named_parameters() if not torch.equal(value, before[name])}
    assert any(name.startswith("model.") for name in moved)
    head = [] if model.copy_weights is None else list(model.copy_weights.parameters())
    assert get_symmetrization(method).trainable == bool(head)
    assert any(name.startswith("copy_weights.") for name in moved) == bool(head)

    def errors(of, prompts):
        if kind == "seq2seq":
            return seq2seq_token_errors(of, tokenizer, CLASS_LISTS, prompts, TARGETS[: len(prompts)])
        return causal_token_errors(of, tokenizer, CLASS_LISTS, tokenizer(prompts, return_tensors="pt", padding=True))

    for prompts in (PROMPTS, FIXED_PROMPTS):
        found = errors(model, prompts)
        assert len(found) == 6 and max(found) <= 1e-4, (prompts, found)
    assert max(errors(base, PROMPTS)) > 1e-4  # the inner model it trained, unwrapped
