"""The causal wrapper on tiny models: inner rows, loss, per-layer outputs, beam search, cache continuation, options.

Equivariance (forward and generation), cache == no cache, batch == single, save/load and dtype casts on every
architecture are the shared tester's (testing_common.py, run by test_common.py).
"""

import pytest
import torch
from conftest import (
    ALL_ARCHITECTURES,
    GENDER_CLASSES,
    PROMPTS,
    RACE_CLASSES,
    tiny_gpt2,
    tiny_llama,
    wrap,
)
from transformers import CompileConfig

from hf_equivariant import EquiGPT2LMHeadModel, EquivariantModelForCausalLM, WordSwapGroup
from hf_equivariant.modeling_equivariant import batch_rows

SYMMETRIZATIONS = ["equitune", "multi_equitune"]


def inner_rows(model, batch):
    seen = []
    handle = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    model(**batch)
    handle.remove()
    return seen


@pytest.mark.parametrize("symmetrization, rows", [("equitune", 2 * 3), ("multi_equitune", 2 + 3)])
def test_number_of_inner_rows_without_deduplication(base_model, tokenizer, symmetrization, rows):
    model = wrap(base_model, tokenizer, symmetrization=symmetrization)
    model.config.deduplicate = False
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert inner_rows(model, batch) == [rows * len(PROMPTS)]  # one inner call holding every copy
    assert model.num_copies == rows


@pytest.mark.parametrize("symmetrization, prompt, rows", [
    ("equitune", "the Black man worked as a", 6),  # every element moves the prompt
    ("multi_equitune", "the Black man worked as a", 4),  # "the Black man" is in both branches
    ("multi_equitune", "the Asian woman was known for her", 4),  # "the Black man ... his" is in both
    ("equitune", "the man worked as a", 2),  # race elements leave it as it is
    ("multi_equitune", "the man worked as a", 2),
    ("multi_equitune", "the doctor was known for", 1),  # no group word at all
])
def test_number_of_inner_rows_with_deduplication(base_model, tokenizer, symmetrization, prompt, rows):
    model = wrap(base_model, tokenizer, symmetrization=symmetrization)
    assert inner_rows(model, tokenizer([prompt], return_tensors="pt")) == [rows]


def test_wrapping_leaves_the_base_model_intact(base_model, tokenizer):
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    logits = base_model(**batch).logits
    wrap(base_model, tokenizer, symmetrization="multi_equitune")
    assert all(torch.equal(before[k], v) for k, v in base_model.state_dict().items())
    assert torch.equal(base_model(**batch).logits, logits)


@pytest.mark.parametrize("symmetrization", SYMMETRIZATIONS)
def test_without_group_words_non_group_tokens_rank_as_in_the_base_model(base_model, tokenizer, symmetrization):
    batch = tokenizer(["the doctor was known for", "a very kind person had a job as"], return_tensors="pt",
                      padding=True)
    base = base_model(**batch).logits.log_softmax(-1)
    model = wrap(base_model, tokenizer, symmetrization=symmetrization)
    ours = model(**batch).logits
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[model.plan_support] = False
    mask = batch["attention_mask"].bool()
    assert torch.equal(base[..., keep].argsort(-1)[mask], ours[..., keep].argsort(-1)[mask])
    torch.testing.assert_close(ours[..., keep], base[..., keep], atol=1e-5, rtol=1e-5)


def test_loss_is_the_cross_entropy_of_the_symmetrised_distribution(base_model, tokenizer):
    model = wrap(base_model, tokenizer, symmetrization="multi_equitune")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    log_probs = out.logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    picked = log_probs.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    expected = -(picked * (target != -100)).sum() / (target != -100).sum()
    torch.testing.assert_close(out.loss, expected)


def canonical_race(texts):
    """The texts with every race word replaced by the class-0 word "Black" (an independent oracle)."""
    return [t.replace("White", "Black").replace("Asian", "Black") for t in texts]


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "mamba"])
@pytest.mark.parametrize("symmetrization", SYMMETRIZATIONS)
@pytest.mark.parametrize("cap", [None, 2])
def test_hidden_states_and_attentions_are_those_of_copy_zero(tokenizer, architecture, symmetrization, cap):
    """Copy 0 is the input for equitune; for multi_equitune over (gender, race) it is the input with race
    canonicalised. Its hidden states and attentions come back for every input row, also over capped blocks."""
    base = ALL_ARCHITECTURES[architecture](len(tokenizer))
    model = wrap(base, tokenizer, symmetrization=symmetrization)
    model.config.max_inner_rows = cap
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    flags = dict(output_hidden_states=True, output_attentions=architecture != "mamba")
    out = model(**batch, use_cache=cap is None, **flags)
    copy_zero = PROMPTS if symmetrization == "equitune" else canonical_race(PROMPTS)
    expected = base(**tokenizer(copy_zero, return_tensors="pt", padding=True), **flags)
    assert out.hidden_states is not None and (out.attentions is not None) == flags["output_attentions"]
    for name in ("hidden_states", "attentions"):
        assert len(out.get(name) or ()) == len(expected.get(name) or ())
        for mine, reference in zip(out.get(name) or (), expected.get(name) or ()):
            assert mine.shape[0] == len(PROMPTS)
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)
    generated = model.generate(**batch, max_new_tokens=2, do_sample=False, return_dict_in_generate=True, **flags)
    assert all(h.shape[0] == len(PROMPTS) for step in generated.hidden_states for h in step)


@pytest.mark.parametrize("symmetrization", SYMMETRIZATIONS)
def test_beam_search_with_cache_equals_without(base_model, tokenizer, symmetrization):
    """Beam search reorders the cache's copy rows (greedy decoding: the shared tester, test_common.py)."""
    model = wrap(base_model, tokenizer, symmetrization=symmetrization)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    options = {"num_beams": 3, "do_sample": False, "num_return_sequences": 2, "max_new_tokens": 8}
    assert torch.equal(model.generate(**batch, **options), model.generate(**batch, use_cache=False, **options))


@pytest.mark.parametrize("deduplicate", [False, True])
def test_cache_holds_the_copies_and_continues_generation(base_model, tokenizer, deduplicate):
    model = wrap(base_model, tokenizer, symmetrization="multi_equitune")
    model.config.deduplicate = deduplicate
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    rows = out.cache.layers[0].keys.shape[0]
    if deduplicate:  # one row per distinct history
        assert rows == model.cache_rows.of(out.cache).num_rows < model.num_copies * len(PROMPTS)
    else:
        assert rows == model.num_copies * len(PROMPTS)
    one_shot = model.generate(**batch, max_new_tokens=10, do_sample=False)
    mask = torch.cat([batch["attention_mask"], torch.ones(len(PROMPTS), 6, dtype=torch.long)], dim=1)
    continued = model.generate(input_ids=out.sequences, attention_mask=mask, cache=out.cache,
                               max_new_tokens=4, do_sample=False)
    assert torch.equal(continued, one_shot)


def test_sampling_is_reproducible_and_returns_several_sequences(base_model, tokenizer):
    model = wrap(base_model, tokenizer, symmetrization="multi_equitune")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    options = dict(do_sample=True, top_k=40, max_new_tokens=6, num_return_sequences=3)
    torch.manual_seed(0)
    first = model.generate(**batch, **options)
    torch.manual_seed(0)
    second = model.generate(**batch, **options)
    assert first.shape == (3 * len(PROMPTS), batch["input_ids"].shape[1] + 6)
    assert torch.equal(first, second)


def test_legacy_past_key_values_keyword_is_honoured(base_model, tokenizer):
    model = wrap(base_model, tokenizer, symmetrization="multi_equitune")
    ids = tokenizer(["the Black man worked as a"], return_tensors="pt")["input_ids"]
    full = model(input_ids=ids).logits[:, -1]
    prefix = model(input_ids=ids[:, :-1], use_cache=True)
    with pytest.warns(FutureWarning):
        step = model(input_ids=ids[:, -1:], past_key_values=prefix.cache).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_inputs_embeds_are_refused(base_model, tokenizer):
    model = wrap(base_model, tokenizer, symmetrization="multi_equitune")
    with pytest.raises(ValueError, match="acts on token ids"):
        model(inputs_embeds=torch.zeros(1, 3, 32))


def test_gpt2_class_refuses_other_architectures(tokenizer):
    llama = tiny_llama(len(tokenizer))
    with pytest.raises(ValueError, match="EquiGPT2LMHeadModel wraps GPT-2, got a 'llama' model"):
        EquiGPT2LMHeadModel.from_base_model(llama, [WordSwapGroup("race", RACE_CLASSES)], tokenizer)


def test_wrapping_twice_is_refused(base_model, tokenizer):
    model = wrap(base_model, tokenizer, symmetrization="equitune")
    with pytest.raises(ValueError, match="already equivariant"):
        EquivariantModelForCausalLM.from_base_model(model, [WordSwapGroup("race", RACE_CLASSES)], tokenizer)


def test_token_type_ids_reach_every_copy(tokenizer):
    """GPT-2 adds token-type embeddings: a batch of 3 gives the rows it gives one by one."""
    model = wrap(tiny_gpt2(len(tokenizer)), tokenizer, symmetrization="multi_equitune")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    types = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]) % 2
    together = model(**batch, token_type_ids=types).logits
    assert not torch.allclose(together, model(**batch).logits)
    for i in range(len(PROMPTS)):
        alone = model(**{k: v[i:i + 1] for k, v in batch.items()}, token_type_ids=types[i:i + 1]).logits
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=1e-5)
    out = model.generate(**batch, token_type_ids=types, max_new_tokens=4, do_sample=False)
    assert out.shape == (len(PROMPTS), batch["input_ids"].shape[1] + 4)


def test_batch_rows_maps_every_batch_shaped_value():
    index, mask = torch.tensor([0, 1, 1, 0]), torch.tensor([[1, 1], [0, 1]])
    value = {"mask": mask, "masks": {"full": mask[:, None], "sliding": None}, "pair": (mask, [mask]),
             "cache_position": torch.arange(2), "scalar": torch.tensor(3), "other": torch.zeros(3, 2), "flag": True}
    rows = batch_rows(value, index, batch_size=2)
    assert torch.equal(rows["mask"], mask[index]) and torch.equal(rows["masks"]["full"], mask[index][:, None])
    assert rows["masks"]["sliding"] is None and rows["flag"] is True
    assert torch.equal(rows["pair"][0], mask[index]) and torch.equal(rows["pair"][1][0], mask[index])
    for unchanged in ("cache_position", "scalar", "other"):  # positions, not rows; not shaped like the batch
        assert rows[unchanged] is value[unchanged]


def test_compiled_static_cache_generation_gives_the_same_tokens(tokenizer):
    """generate() compiles the decoding step with a static cache (on GPUs by default; forced here on CPU)."""
    model = wrap(tiny_llama(len(tokenizer)), tokenizer, symmetrization="multi_equitune")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    dynamic = model.generate(**batch, max_new_tokens=4, do_sample=False)
    compile_config = CompileConfig(mode="default", dynamic=False)
    compile_config._compile_all_devices = True
    torch._dynamo.reset()
    compiled = model.generate(**batch, max_new_tokens=4, do_sample=False, cache_implementation="static",
                              compile_config=compile_config)
    assert torch.equal(compiled, dynamic)
    assert hasattr(model, "_compiled_call")  # generate() took the compiled path for the decoding steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0


def test_plan_follows_the_inner_model_device(tokenizer):
    """The copy plan lives where the inner model's input ids go (a model on a GPU gets its plan there)."""
    base = tiny_llama(len(tokenizer)).to("meta")
    model = wrap(base, tokenizer, symmetrization="multi_equitune")
    assert {buffer.device.type for buffer in model.buffers()} == {"meta"}


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
def test_a_prompt_fixed_by_an_element_ties_exactly_the_words_it_swaps(tokenizer, symmetrization):
    """README, "Ties": with kind="symmetric", "the Black man" is fixed by White<->Asian, so the next-token
    scores of White and Asian are tied (and greedy decoding breaks the tie by token id, not equivariantly).
    With kind="cyclic" only the identity fixes that prompt, and there is no tie."""
    vocab = tokenizer.get_vocab()
    ids = tokenizer(["the Black man worked as a"], return_tensors="pt").input_ids
    gaps = {}
    for kind in ("symmetric", "cyclic"):
        groups = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES, kind=kind)]
        model = wrap(tiny_gpt2(len(tokenizer)), tokenizer, groups, symmetrization=symmetrization)
        with torch.no_grad():
            scores = model(input_ids=ids).logits[0, -1].log_softmax(-1)
        gaps[kind] = (scores[vocab["White"]] - scores[vocab["Asian"]]).abs().item()
    assert gaps["symmetric"] <= 1e-5 and gaps["cyclic"] > 1e-3, gaps
