"""Training through the wrapper: Trainer with gradient accumulation, activation checkpointing."""

import pytest
import torch
from conftest import GENDER_CLASSES, PROMPTS, RACE_CLASSES, tiny_gpt2, word_tokenizer
from datasets import Dataset
from testing_common import Case, EquivariantCommonTester, Vocabulary
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_equivariant import WordSwapGroup, make_equivariant

GROUPS = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
TEXTS = [
    "the Black man worked as a doctor .",
    "she was known for her kind people",
    "the gay White boy had a job as a very good cook and a teacher",
    "a woman",
]


def train_one_step(tokenizer, tmp_path, batch_size, accumulation, checkpointing=False):
    tokenizer = word_tokenizer(padding_side="right")  # left padding would shift positions with the batch's padding
    model = make_equivariant(tiny_gpt2(len(tokenizer)), GROUPS, tokenizer=tokenizer)
    data = Dataset.from_dict({"text": TEXTS}).map(lambda x: tokenizer(x["text"]), remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
        report_to=[], use_cpu=True, seed=0, save_strategy="no", activation_checkpointing=checkpointing,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    result = trainer.train()
    return model, result


def test_trainer_step_with_gradient_accumulation_equals_one_large_batch(tokenizer, tmp_path):
    accumulated, result = train_one_step(tokenizer, tmp_path / "a", batch_size=2, accumulation=2)
    single, _ = train_one_step(tokenizer, tmp_path / "b", batch_size=4, accumulation=1)
    untrained = tiny_gpt2(len(tokenizer))
    assert torch.isfinite(torch.tensor(result.training_loss))
    moved = [not torch.equal(p, q) for p, q in zip(accumulated.model.parameters(), untrained.parameters())]
    assert any(moved)
    # the loss is summed over tokens and divided by the tokens of the whole accumulated batch (num_items_in_batch)
    for p, q in zip(accumulated.parameters(), single.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    vocabulary = Vocabulary(tokenizer, [GENDER_CLASSES, RACE_CLASSES], "word", PROMPTS, [], [])
    tester, case = EquivariantCommonTester(), Case(accumulated.model, vocabulary)
    errors = tester.equivariance_errors(accumulated.eval(), case, tester.forward_inputs(case, "left"),
                                        vocabulary.elements())
    assert len(errors) == 6 and max(errors.values()) <= 1e-4


def test_trainer_with_gradient_checkpointing(tokenizer, tmp_path):
    checkpointed, _ = train_one_step(tokenizer, tmp_path / "a", batch_size=4, accumulation=1, checkpointing=True)
    plain, _ = train_one_step(tokenizer, tmp_path / "b", batch_size=4, accumulation=1)
    assert checkpointed.is_activation_checkpointing
    for p, q in zip(checkpointed.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
def test_activation_checkpointing_backward_matches_plain_backward(base_model, tokenizer, symmetrization):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = make_equivariant(base_model, GROUPS, tokenizer=tokenizer, symmetrization=symmetrization).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        model(**batch, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if checkpointing:
            model.activation_checkpointing_disable()
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-5, rtol=1e-5)
