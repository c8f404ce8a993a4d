"""peft with equivariant models, both ways round, checked against `ActionOracle` (conftest).

- LoRA on the wrapper: `get_peft_model(wrapper, LoraConfig(...))`, train with `Trainer` through the symmetrised
  loss, save the adapter, reload it onto a freshly loaded wrapper, merge: every element stays exact.
- A wrapper around a peft model: `make_equivariant(peft_model, ...)` wraps its transformers model with the
  adapter's layers in place.
"""

import copy

import pytest
import torch
from conftest import (
    BPE_GENDER_CLASSES,
    RACE_CLASSES,
    ActionOracle,
    all_elements,
    assert_word_equivariant,
    bpe_tokenizer,
    tiny_llama,
)
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_equivariant import EquivariantModelForCausalLM, WordSwapGroup, make_equivariant

CLASS_LISTS = [BPE_GENDER_CLASSES, RACE_CLASSES]
GROUPS = [WordSwapGroup("gender", BPE_GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
TEXTS = ["the Black man worked as a doctor.", "she was known for her kind son", "Hispanics met the White woman",
         "he said his job was a nurse", "the Asian daughter and the male teacher"]
# A whole word of every factor, so that no element but the identity fixes a prompt; and pieces ("His", " Black").
PROMPTS = ["the Black man met Hispanics", "Blackstone saw the Asian woman", "He said: White, she"]
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer(padding_side="right")  # right padding for training: positions do not shift


@pytest.fixture(scope="module")
def oracle(bpe):
    return ActionOracle(bpe, CLASS_LISTS, len(bpe))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def largest_change(a, b) -> float:
    """Largest difference between two logit tensors, over the scores neither masks (-inf where words glue)."""
    return (a - b).nan_to_num(0.0).abs().max().item()


def train(model, tokenizer, output_dir, steps=4):
    data = Dataset.from_dict({"text": TEXTS}).map(lambda x: tokenizer(x["text"]), remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=len(TEXTS), max_steps=steps, learning_rate=0.05,
        lr_scheduler_type="constant", report_to=[], use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()


def test_lora_on_the_wrapper_trains_saves_reloads_and_merges_exactly_equivariant(bpe, oracle, tmp_path):
    wrapper = make_equivariant(tiny_llama(len(bpe)), GROUPS, bpe)
    wrapper.save_pretrained(tmp_path / "wrapper")  # before get_peft_model, which puts LoRA layers into it
    ids = bpe(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    before = logits(wrapper, ids)

    peft_model = get_peft_model(wrapper, LoraConfig(task_type="CAUSAL_LM", **LORA))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    result = train(peft_model, bpe, tmp_path / "run")
    assert torch.isfinite(torch.tensor(result.training_loss))
    peft_model.eval()
    trained = logits(peft_model, ids)
    assert largest_change(trained, before) > 1e-2  # the adapter learnt something
    assert max(assert_word_equivariant(peft_model, oracle, ids, all_elements(CLASS_LISTS))) <= 1e-4

    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "wrapper")
    assert isinstance(fresh, EquivariantModelForCausalLM)
    torch.testing.assert_close(logits(fresh, ids), before, rtol=0, atol=0)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, ids), trained, rtol=0, atol=0)

    merged = reloaded.merge_and_unload()
    assert isinstance(merged, EquivariantModelForCausalLM)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids), trained, rtol=1e-5, atol=1e-5)
    errors = assert_word_equivariant(merged, oracle, ids, all_elements(CLASS_LISTS))
    assert len(errors) == 6 and max(errors) <= 1e-4
    # negative control: the trained inner model on its own is not equivariant
    with pytest.raises(AssertionError):
        assert_word_equivariant(merged.model, oracle, ids, all_elements(CLASS_LISTS)[1:], check_mask=False)


def test_make_equivariant_of_a_peft_model_keeps_the_adapter(bpe, oracle, tmp_path):
    base = tiny_llama(len(bpe))
    plain = copy.deepcopy(base)
    # init_lora_weights=False: random A and B, so that the adapter changes the model without training
    peft_model = get_peft_model(base, LoraConfig(init_lora_weights=False, **LORA)).eval()
    wrapper = make_equivariant(peft_model, GROUPS, bpe).eval()
    assert wrapper.model is peft_model.get_base_model()
    ids = bpe(PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    errors = assert_word_equivariant(wrapper, oracle, ids, all_elements(CLASS_LISTS))
    assert len(errors) == 6 and max(errors) <= 1e-4

    # the adapter is kept: the same as wrapping a merged copy, not as wrapping the plain base model
    merged = make_equivariant(copy.deepcopy(peft_model).merge_and_unload(), GROUPS, bpe).eval()
    torch.testing.assert_close(logits(wrapper, ids), logits(merged, ids), rtol=1e-5, atol=1e-5)
    assert largest_change(logits(wrapper, ids), logits(make_equivariant(plain, GROUPS, bpe), ids)) > 1e-2
    with peft_model.disable_adapter():  # peft's switches act through the wrapper
        torch.testing.assert_close(logits(wrapper, ids), logits(make_equivariant(plain, GROUPS, bpe), ids))
    # negative control: the peft model on its own is not equivariant
    with pytest.raises(AssertionError):
        assert_word_equivariant(peft_model, oracle, ids, all_elements(CLASS_LISTS)[1:], check_mask=False)

    # the adapter saved from the peft model loads back onto a plain base and wraps to the same model
    peft_model.save_pretrained(tmp_path / "adapter")
    plain.save_pretrained(tmp_path / "base")
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    rewrapped = make_equivariant(again, GROUPS, bpe).eval()
    torch.testing.assert_close(logits(rewrapped, ids), logits(wrapper, ids), rtol=0, atol=0)


def test_make_equivariant_refuses_other_modules_naming_what_to_pass(bpe):
    with pytest.raises(TypeError, match="PreTrainedModel or a peft PeftModel"):
        make_equivariant(torch.nn.Linear(2, 2), GROUPS, bpe)
