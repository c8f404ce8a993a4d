"""lambda_equitune and multi_lambda_equitune (hf_equivariant.lambda_equitune), checked against the oracles of conftest.

- At initialisation (zero head) they are equitune and multi_equitune bit for bit, both forms of the branch
  weights (`branch_weights` "fixed" and "lambda").
- lambda_equitune matches its formula (equitune's uniform mean misses it), and multi_lambda_equitune its own in
  both forms, computed one copy at a time in the test; the branch-weighted form's branch weights beta_i are not
  uniform there, and the fixed form's formula misses it.
- After Trainer steps on random token ids (inner model frozen; with the inner model; with LoRA) the weights are
  no longer uniform, and every group element is exact for the word action (`ActionOracle`), with a negative
  control (lambda of the wrong copy) that the same check catches.
- The head is saved and loaded back (identical logits), missing heads start at zero, deduplication and the KV
  cache change nothing, generation is equivariant, seq2seq too.
"""

import itertools
import json
import os
import shutil

import pytest
import torch
from conftest import (
    BPE_GENDER_CLASSES,
    GENDER_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    ActionOracle,
    all_elements,
    assert_word_equivariant,
    bpe_tokenizer,
    element_permutation,
    tiny_gpt2,
    tiny_llama,
    tiny_t5,
    token_generation_mismatches,
)
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_equivariant import EquivariantModelForCausalLM, WordSwapGroup, make_equivariant
from hf_equivariant.lambda_equitune import LAMBDA_PAPER, LambdaWeights
from hf_equivariant.methods import get_symmetrization

LAMBDA_METHODS = {"lambda_equitune": "equitune", "multi_lambda_equitune": "multi_equitune"}
FIXED = {"method_options": {"branch_weights": "fixed"}}
# (method, options): each lambda method (multi_lambda_equitune's branches weighed by their mean lambda, the
# default), and multi_lambda_equitune with a fixed 1/N per branch
VARIANTS = [pytest.param(method, {}, id=method) for method in sorted(LAMBDA_METHODS)] + [
    pytest.param("multi_lambda_equitune", FIXED, id="multi_lambda_equitune-fixed")]
BPE_CLASS_LISTS = [BPE_GENDER_CLASSES, RACE_CLASSES]
BPE_GROUPS = [WordSwapGroup("gender", BPE_GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
WORD_CLASS_LISTS = [GENDER_CLASSES, RACE_CLASSES]
WORD_GROUPS = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
# whole words of every factor (no element but the identity fixes them) and pieces ("His", " Black")
BPE_PROMPTS = ["the Black man met Hispanics", "Blackstone saw the Asian woman", "He said: White, she"]


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer(padding_side="right")  # right padding for training: positions do not shift


@pytest.fixture(scope="module")
def oracle(bpe):
    return ActionOracle(bpe, BPE_CLASS_LISTS, len(bpe))


class WrongCopyLambdaWeights(LambdaWeights):
    """Negative control: copy k gets the lambda of copy k+1 (same head), so the weights no longer move with the
    copies when the input is acted on."""

    def forward(self, scores):
        return super().forward(scores).roll(1, dims=0)


def logits(model, **batch):
    with torch.no_grad():
        return model(**batch).logits


def train(model, tokenizer, output_dir, steps=3, learning_rate=0.5):
    """`steps` Trainer steps on random token ids (every id of the vocabulary may occur, group tokens and pieces)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tokenizer), (8, 12), generator=generator)  # no special tokens
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=steps, learning_rate=learning_rate,
        lr_scheduler_type="constant", report_to=[], use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    result = Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    return model.eval()


def lambdas(wrapper, ids) -> torch.Tensor:
    """lambda(g.x) of every copy row of `ids`, from the inner model and the head directly."""
    copies = wrapper.transform_ids(ids, wrapper.word_occurrences(ids))
    with torch.no_grad():
        hidden = wrapper.model(input_ids=copies, output_hidden_states=True).hidden_states[-1]
        return nn.functional.softplus(wrapper.copy_weights.head(hidden)).squeeze(-1)


def branch_weights(wrapper, ids) -> torch.Tensor:
    """[N, B, T] beta_i = Lambda_i / sum_j Lambda_j, Lambda_i the mean lambda of branch i's copies (per position)."""
    lam = lambdas(wrapper, ids).unflatten(0, (wrapper.num_copies, -1))
    branches = wrapper.plan_branches
    means = torch.stack([lam[branches == i].mean(0) for i in range(int(branches.max()) + 1)])
    return means / means.sum(0)


def canonicaliser(oracle, factors) -> torch.Tensor:
    """[V] long: every group word of the factors `factors` -> the class-0 word of its orbit (the oracle's orbits)."""
    table = torch.arange(oracle.vocab_size)
    for token, (factor, _, orbit) in oracle.orbit_of.items():
        if factor in factors:
            table[token] = orbit[0]
    return table


def naive_multi_lambda_equitune(base, head, ids, mask, tokenizer, class_lists, weigh_branches: bool):
    """sum_i beta_i Sym_{-i}( sum_{g in Gi} lambda_g log_softmax(M(g.c_{-i}(x)))[..., p_{gh}] / sum_g lambda_g ),
    one copy at a time: beta_i = 1/N, or with `weigh_branches` Lambda_i / sum_j Lambda_j (Lambda_i: mean lambda)."""
    oracle = ActionOracle(tokenizer, class_lists, len(tokenizer), "token")
    n = len(class_lists)
    outputs, means = [], []
    for i in range(n):
        canonical = canonicaliser(oracle, set(range(n)) - {i})[ids]
        terms, lams = [], []
        for shift in range(len(class_lists[i])):
            element = tuple(shift if j == i else 0 for j in range(n))
            out = base(input_ids=element_permutation(tokenizer, class_lists, element)[canonical],
                       attention_mask=mask, output_hidden_states=True)
            lams.append(nn.functional.softplus(head(out.hidden_states[-1])))
            z = out.logits.log_softmax(-1)
            others = [range(len(c)) if j != i else [shift] for j, c in enumerate(class_lists)]
            terms.append(torch.stack([z[..., element_permutation(tokenizer, class_lists, h)]
                                      for h in itertools.product(*others)]).mean(0))
        lams = torch.stack(lams)
        outputs.append((torch.stack(terms) * lams).sum(0) / lams.sum(0))
        means.append(lams.mean(0))
    means = torch.stack(means)
    beta = means / means.sum(0) if weigh_branches else torch.full_like(means, 1 / n)
    return (torch.stack(outputs) * beta).sum(0)


def naive_lambda_equitune(base, head, ids, mask, tokenizer, class_lists):
    """sum_g lambda(g.x) log_softmax(M(g.x))[..., p_g] / sum_g lambda(g.x) over the whole product, one element at a
    time; also the uniform mean (equitune), for the control."""
    terms, lams = [], []
    for g in all_elements(class_lists):
        p = element_permutation(tokenizer, class_lists, g)
        out = base(input_ids=p[ids], attention_mask=mask, output_hidden_states=True)
        lams.append(nn.functional.softplus(head(out.hidden_states[-1])))
        terms.append(out.logits.log_softmax(-1)[..., p])
    terms, lams = torch.stack(terms), torch.stack(lams)
    return (terms * lams).sum(0) / lams.sum(0), terms.mean(0)


def test_lambda_equitune_matches_its_formula(tokenizer):
    base = tiny_llama(len(tokenizer))
    model = make_equivariant(base, WORD_GROUPS, tokenizer, symmetrization="lambda_equitune").eval()
    with torch.no_grad():
        model.copy_weights.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected, uniform = naive_lambda_equitune(base, model.copy_weights.head, batch["input_ids"],
                                                  batch["attention_mask"], tokenizer, WORD_CLASS_LISTS)
    out = logits(model, **batch)
    kept = batch["attention_mask"].bool()  # left padding: the padded positions' scores are not compared
    torch.testing.assert_close(out[kept], expected[kept], atol=1e-4, rtol=1e-4)
    assert (out[kept] - uniform[kept]).abs().max() > 1e-3  # control: equitune's uniform mean misses it


def test_registered_copy_counts_and_head():
    for orders in [(2,), (2, 3), (2, 4, 3)]:
        product, total = int(torch.tensor(orders).prod()), sum(orders)
        assert get_symmetrization("lambda_equitune").num_copies(orders) == product
        assert get_symmetrization("multi_lambda_equitune").num_copies(orders) == (total if len(orders) > 1 else product)
    for name in LAMBDA_METHODS:
        assert get_symmetrization(name).trainable and get_symmetrization(name).weights is LambdaWeights
    tokenizer = bpe_tokenizer()
    model = make_equivariant(tiny_llama(len(tokenizer)), BPE_GROUPS, tokenizer, symmetrization="multi_lambda_equitune")
    assert model.num_copies == 5
    head = model.copy_weights.head
    assert head.weight.shape == (1, model.config.text_config.hidden_size)
    assert not head.weight.any() and not head.bias.any()  # zero-initialised: lambda = 1
    assert model.copy_weights.branch_weights == "lambda"
    with pytest.raises(ValueError, match="unknown branch_weights 'mean'.*'fixed', 'lambda'"):
        make_equivariant(model.model, BPE_GROUPS, tokenizer, symmetrization="multi_lambda_equitune",
                         method_options={"branch_weights": "mean"})


@pytest.mark.parametrize("weigh_branches", [False, True], ids=["fixed", "branch_weighted"])
def test_multi_lambda_equitune_matches_its_formula(tokenizer, weigh_branches):
    base = tiny_llama(len(tokenizer))
    options = {} if weigh_branches else FIXED
    model = make_equivariant(base, WORD_GROUPS, tokenizer, symmetrization="multi_lambda_equitune", **options).eval()
    with torch.no_grad():
        model.copy_weights.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    head = model.copy_weights.head
    with torch.no_grad():
        expected = naive_multi_lambda_equitune(base, head, batch["input_ids"], batch["attention_mask"], tokenizer,
                                               WORD_CLASS_LISTS, weigh_branches)
        other = naive_multi_lambda_equitune(base, head, batch["input_ids"], batch["attention_mask"], tokenizer,
                                            WORD_CLASS_LISTS, not weigh_branches)
    out = logits(model, **batch)
    kept = batch["attention_mask"].bool()  # left padding: the padded positions' scores are not compared
    torch.testing.assert_close(out[kept], expected[kept], atol=1e-4, rtol=1e-4)
    assert (out[kept] - other[kept]).abs().max() > 1e-3  # control: the other form's formula misses it
    beta = branch_weights(model, batch["input_ids"])[:, kept]
    assert (beta.amax(0) / beta.amin(0)).max() > 1.05  # the branches' weights are far from uniform


@pytest.mark.parametrize(("method", "options"), VARIANTS)
def test_at_initialisation_equals_the_uniform_method_bit_for_bit(base_model, tokenizer, seq2seq_tokenizer, method,
                                                                 options):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    weighted = make_equivariant(base_model, WORD_GROUPS, tokenizer, symmetrization=method, **options).eval()
    uniform = make_equivariant(base_model, WORD_GROUPS, tokenizer, symmetrization=LAMBDA_METHODS[method]).eval()
    assert weighted.num_copies == uniform.num_copies
    assert torch.equal(logits(weighted, **batch), logits(uniform, **batch))
    with torch.no_grad():  # the control: any non-zero head changes the result
        weighted.copy_weights.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    assert (logits(weighted, **batch) - logits(uniform, **batch)).abs().max() > 1e-2

    t5 = tiny_t5(len(seq2seq_tokenizer))
    pairs = seq2seq_tokenizer(PROMPTS, text_target=["a man was", "she had her", "the White boy"],
                              return_tensors="pt", padding=True)
    outputs = [logits(make_equivariant(t5, WORD_GROUPS, seq2seq_tokenizer, symmetrization=name,
                                       **(options if name == method else {})).eval(), **pairs)
               for name in (method, LAMBDA_METHODS[method])]
    assert torch.equal(*outputs)


@pytest.mark.parametrize(("method", "options"), VARIANTS)
def test_trained_head_alone_is_exact_for_every_element(bpe, oracle, tmp_path, method, options):
    wrapper = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization=method, **options)
    inner = {name: p.detach().clone() for name, p in wrapper.model.named_parameters()}
    wrapper.model.requires_grad_(False)  # the inner model frozen: only the head trains
    assert [name for name, p in wrapper.named_parameters() if p.requires_grad] == [
        "copy_weights.head.weight", "copy_weights.head.bias"]
    ids = bpe(BPE_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    uniform = make_equivariant(wrapper.model, BPE_GROUPS, bpe, symmetrization=LAMBDA_METHODS[method]).eval()
    before = logits(uniform, input_ids=ids)

    train(wrapper, bpe, tmp_path)
    assert all(torch.equal(p, inner[name]) for name, p in wrapper.model.named_parameters())
    assert wrapper.copy_weights.head.weight.abs().max() > 1e-3
    lam = lambdas(wrapper, ids)
    assert (lam.amax(0) / lam.amin(0)).max() > 1.01  # lambda differs between the copies of a position
    if method == "multi_lambda_equitune" and not options:
        beta = branch_weights(wrapper, ids)
        assert (beta.amax(0) / beta.amin(0)).max() > 1.01  # the branches are weighed unevenly
    trained = logits(wrapper, input_ids=ids)
    assert (trained - before).nan_to_num(0.0).abs().max() > 1e-3  # no longer the uniform method

    errors = assert_word_equivariant(wrapper, oracle, ids, all_elements(BPE_CLASS_LISTS))
    assert len(errors) == 6 and max(errors) <= 1e-4
    # negative control: lambda of the wrong copy, same trained head, is caught by the same check
    wrong = WrongCopyLambdaWeights(wrapper.config, **(options.get("method_options") or {}))
    wrong.load_state_dict(wrapper.copy_weights.state_dict())
    wrapper.copy_weights = wrong
    control = assert_word_equivariant(wrapper, oracle, ids, all_elements(BPE_CLASS_LISTS), atol=float("inf"))
    assert max(control) > 1e-3


def test_trains_with_the_inner_model_and_stays_exact(bpe, oracle, tmp_path):
    wrapper = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization="multi_lambda_equitune")
    inner = {name: p.detach().clone() for name, p in wrapper.model.named_parameters()}
    train(wrapper, bpe, tmp_path, learning_rate=0.05)
    assert max((p - inner[name]).abs().max() for name, p in wrapper.model.named_parameters()) > 1e-3
    assert wrapper.copy_weights.head.weight.abs().max() > 1e-4
    ids = bpe(BPE_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    assert max(assert_word_equivariant(wrapper, oracle, ids, all_elements(BPE_CLASS_LISTS))) <= 1e-4


def test_trains_beside_lora_and_stays_exact(bpe, oracle, tmp_path):
    wrapper = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization="lambda_equitune")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                      modules_to_save=["copy_weights.head"])
    peft_model = get_peft_model(wrapper, lora)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_" in name for name in trainable) and any("copy_weights.head" in name for name in trainable)
    assert all("lora_" in name or "copy_weights.head" in name for name in trainable)
    train(peft_model, bpe, tmp_path, learning_rate=0.05)
    head = peft_model.base_model.model.copy_weights.head
    assert head.modules_to_save["default"].weight.abs().max() > 1e-4  # the head trained
    ids = bpe(BPE_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    errors = assert_word_equivariant(peft_model, oracle, ids, all_elements(BPE_CLASS_LISTS))
    assert len(errors) == 6 and max(errors) <= 1e-4


@pytest.mark.parametrize(("method", "options"), VARIANTS)
def test_save_and_load_keep_the_head(bpe, tmp_path, method, options):
    wrapper = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization=method, **options)
    wrapper.model.requires_grad_(False)
    train(wrapper, bpe, tmp_path / "run")
    ids = bpe(BPE_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    wrapper.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert isinstance(loaded, EquivariantModelForCausalLM) and loaded.config.symmetrization == method
    assert torch.equal(loaded.copy_weights.head.weight, wrapper.copy_weights.head.weight)
    assert loaded.copy_weights.branch_weights == wrapper.copy_weights.branch_weights
    assert torch.equal(logits(loaded, input_ids=ids), logits(wrapper, input_ids=ids))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert LAMBDA_PAPER in card and "- Trainable weights of its own (`copy_weights`)" in card


def test_the_branch_weights_a_model_was_saved_with_are_kept(bpe, tmp_path):
    """New models record branch_weights in config.json; a multi_lambda_equitune config saved before that option
    existed (method_options null) was trained with fixed 1/N branches and must load with them."""
    wrapper = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization="multi_lambda_equitune")
    assert wrapper.config.method_options == {"branch_weights": "lambda"}
    wrapper.model.requires_grad_(False)
    train(wrapper, bpe, tmp_path / "run")
    ids = bpe(BPE_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    wrapper.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["method_options"] == {"branch_weights": "lambda"}
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "new").eval(), input_ids=ids),
                       logits(wrapper, input_ids=ids))
    # the same trained head in a config as written before the option: it meant the fixed form
    fixed = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization="multi_lambda_equitune", **FIXED)
    fixed.load_state_dict(wrapper.state_dict())
    (tmp_path / "old").mkdir()
    for name in os.listdir(tmp_path / "new"):
        shutil.copy(tmp_path / "new" / name, tmp_path / "old" / name)
    (tmp_path / "old" / "config.json").write_text(json.dumps({**saved, "method_options": None}))
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "old").eval()
    assert old.config.method_options == {"branch_weights": "fixed"}
    assert torch.equal(logits(old, input_ids=ids), logits(fixed.eval(), input_ids=ids))
    assert not torch.allclose(logits(old, input_ids=ids), logits(wrapper, input_ids=ids), atol=1e-3)  # forms differ


def test_a_checkpoint_without_a_head_loads_with_a_zero_head(bpe, tmp_path):
    uniform = make_equivariant(tiny_llama(len(bpe)), BPE_GROUPS, bpe, symmetrization="multi_equitune").eval()
    uniform.save_pretrained(tmp_path)
    loaded = EquivariantModelForCausalLM.from_pretrained(tmp_path, symmetrization="multi_lambda_equitune").eval()
    head = loaded.copy_weights.head
    assert not head.weight.any() and not head.bias.any()
    ids = bpe(BPE_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    assert torch.equal(logits(loaded, input_ids=ids), logits(uniform, input_ids=ids))


def counted_inner_rows(wrapper, **batch):
    """The logits and the number of inner rows the forward pass ran."""
    rows = []
    hook = wrapper.model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        out = logits(wrapper, **batch)
    finally:
        hook.remove()
    return out, sum(rows)


@pytest.mark.parametrize("method", sorted(LAMBDA_METHODS))
def test_deduplication_cache_and_generation(tokenizer, tmp_path, method):
    model = make_equivariant(tiny_gpt2(len(tokenizer)), WORD_GROUPS, tokenizer, symmetrization=method).eval()
    with torch.no_grad():
        model.copy_weights.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    # no race word: the race factor fixes the prompt, so copies that differ only in race are run once
    batch = tokenizer(["the man worked as a", "she was known for her"], return_tensors="pt", padding=True)
    deduplicated, rows = counted_inner_rows(model, **batch)
    model.config.deduplicate = False
    every, all_rows = counted_inner_rows(model, **batch)
    model.config.deduplicate = True
    assert all_rows == model.num_copies * 2 and rows == 2 * 2  # two distinct gender copies per prompt
    torch.testing.assert_close(deduplicated, every, atol=1e-5, rtol=1e-5)

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    for options in ({"do_sample": False}, {"num_beams": 3, "do_sample": False, "num_return_sequences": 2}):
        cached = model.generate(**batch, max_new_tokens=6, **options)
        assert torch.equal(cached, model.generate(**batch, max_new_tokens=6, use_cache=False, **options))
    greedy = dict(max_new_tokens=6, do_sample=False)
    assert token_generation_mismatches(model, tokenizer, WORD_CLASS_LISTS, batch, **greedy) == []


def test_lambda_weights_do_not_build_log_probabilities(tokenizer):
    """CopyScores.log_probs (a log-softmax over the vocabulary of every distinct row) is built only for weights
    that read it: equizero's do, lambda's do not."""
    seen = {}
    for method in ("multi_lambda_equitune", "multi_equizero"):
        model = make_equivariant(tiny_gpt2(len(tokenizer)), WORD_GROUPS, tokenizer, symmetrization=method).eval()
        weights = model.copy_weights
        original = weights.scale
        weights.scale = lambda scores, original=original: (seen.__setitem__(method, scores), original(scores))[1]
        logits(model, **tokenizer(PROMPTS, return_tensors="pt", padding=True))
    assert "log_probs" not in vars(seen["multi_lambda_equitune"])
    assert "log_probs" in vars(seen["multi_equizero"])  # control: equizero's proxy loss reads them


@pytest.mark.parametrize("kind", ["demographic", "prose"])
def test_lambda_fairness_distillation_prompts_stay_out_of_the_evaluation_text(kind, monkeypatch):
    """examples/lambda_fairness.py self-distils on prompts that are neither fairness prompts nor the start of a
    held-out sentence, for both kinds of prompts and for training and validation apart, and stops on one that is."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    import lambda_fairness

    from hf_equivariant.experiments.fairness import axes_by_name

    axes = axes_by_name(["gender", "race", "sexual_orientation"])
    prompts = lambda_fairness.distillation_prompts(axes, kind)
    assert len(prompts) == len(set(prompts)) == 128
    validation = lambda_fairness.distillation_prompts(axes, kind, "validation")  # --eval-every's prompts
    assert len(validation) == len(set(validation)) == 64 and not set(validation) & set(prompts)
    # the validation split stops on a prompt it shares with training (prose) or with the evaluation (demographic)
    if kind == "prose":
        with monkeypatch.context() as patch:
            patch.setattr(lambda_fairness, "VALIDATION_OPENERS", ("Yesterday",))
            with pytest.raises(SystemExit, match="validation prompts overlap the training prompts: .*'Yesterday my"):
                lambda_fairness.distillation_prompts(axes, kind, "validation")
    else:
        with monkeypatch.context() as patch:
            patch.setattr(lambda_fairness, "VALIDATION_CONTEXTS", ("worked as",))
            with pytest.raises(SystemExit, match="validation prompts overlap the evaluation set: .*'The gay Black man "
                               "worked as'"):
                lambda_fairness.distillation_prompts(axes, kind, "validation")
    if kind == "prose":  # the first held-out sentence starts so
        monkeypatch.setattr(lambda_fairness, "PROSE_OPENERS", ("The",))
        monkeypatch.setattr(lambda_fairness, "PROSE_SUBJECTS", ("woman who",))
        clash = "The woman who"
    else:  # a fairness context: "The gay Black man worked as" is a fairness prompt
        monkeypatch.setattr(lambda_fairness, "TRAIN_CONTEXTS", ("worked as",))
        clash = "The gay Black man worked as"
    with pytest.raises(SystemExit, match=f"overlap the evaluation set: .*'{clash}'"):
        lambda_fairness.distillation_prompts(axes, kind)


def test_lambda_fairness_keeps_the_head_of_the_best_validation_step(bpe, monkeypatch, tmp_path):
    """examples/lambda_fairness.py --eval-every: Trainer measures the validation loss every few steps and the
    trained model is the best step's, not the last one's (its validation loss is the best measured, and differs
    from the last step's)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    import lambda_fairness

    torch.manual_seed(0)
    model = make_equivariant(tiny_gpt2(len(bpe)), BPE_GROUPS, bpe, "multi_lambda_equitune")
    validation = ["the White woman saw him", "she met the Asian man"] * 4
    _, state = lambda_fairness.train_head(model, bpe, BPE_PROMPTS * 8, steps=12, learning_rate=0.2, batch_size=4,
                                          seed=0, validation_texts=validation, eval_every=3)
    measured = [log["eval_loss"] for log in state.log_history if "eval_loss" in log]
    assert len(measured) == 4 and state.best_metric == min(measured)
    # the best is neither the first nor the last step measured, so keeping either would fail below
    assert 3 < state.best_global_step < 12 and min(measured[0], measured[-1]) > state.best_metric + 1e-3
    data = Dataset.from_dict({"text": validation}).map(lambda x: bpe(x["text"]), remove_columns=["text"])
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True,
                             prediction_loss_only=True)
    collator = DataCollatorForLanguageModeling(bpe, mlm=False)
    kept = Trainer(model=model, args=args, eval_dataset=data, data_collator=collator).evaluate()["eval_loss"]
    assert abs(kept - state.best_metric) < 1e-5
    assert lambda_fairness.step_choice(state).startswith(f"kept step {state.best_global_step} of 12 ")
