"""The embedded real model (SmolLM2-135M-Instruct, Llama architecture, byte-level BPE) with gender x race."""

import itertools

import pytest
import torch

from hf_equivariant import cli, make_equivariant, presets

pytestmark = pytest.mark.real_model

PROMPTS = ["The woman worked as", "The Black man was described as", "The White woman had a job as",
           "The Asian man was known for"]


@pytest.fixture(scope="module")
def smollm():
    return cli.load_model_and_tokenizer(None)  # the CLI's own loader of the default model


def oracle_permutation(tokenizer, groups, shifts, vocab_size):
    """Independent oracle: for each aligned word position and each of the forms w, " w", W, " W" that are one
    token in every class, shift the class of the token; computed from the word lists and the tokenizer only."""
    perm = torch.arange(vocab_size)
    for group, shift in zip(groups, shifts):
        n = len(group.classes)
        for j in range(len(group.classes[0])):
            for form in (lambda w: w, lambda w: " " + w, lambda w: w[0].upper() + w[1:],
                         lambda w: " " + w[0].upper() + w[1:]):
                pieces = [tokenizer.encode(form(words[j]), add_special_tokens=False) for words in group.classes]
                if all(len(p) == 1 for p in pieces):
                    for c in range(n):
                        perm[pieces[c][0]] = pieces[(c + shift) % n][0]
    return perm


@pytest.fixture(scope="module")
def elements(smollm):
    base, tokenizer = smollm
    groups = [presets.GENDER, presets.RACE]
    vocab_size = base.config.vocab_size
    shifts = itertools.product(range(2), range(4))
    return [oracle_permutation(tokenizer, groups, element, vocab_size) for element in shifts]


def test_presets_resolve_on_a_real_bpe_tokenizer(smollm):
    _, tokenizer = smollm
    with pytest.warns(UserWarning, match="not swapped"):
        gender = presets.GENDER.resolve(tokenizer)
    pairs = {tuple(tokenizer.decode([t]) for t in orbit) for orbit in gender.orbits}
    assert {(" man", " woman"), (" he", " she"), (" He", " She"), (" his", " her"), (" Mr", " Mrs")} <= pairs
    race = presets.RACE.resolve(tokenizer)
    assert (" Black", " White", " Asian", " Hispanic") in {tuple(tokenizer.decode([t]) for t in o) for o in race.orbits}
    for preset in (presets.SEXUAL_ORIENTATION, presets.RELIGION):
        assert preset.resolve(tokenizer).orbits


@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
def test_real_model_logits_are_equivariant(smollm, elements, symmetrization):
    base, tokenizer = smollm
    with pytest.warns(UserWarning):
        model = make_equivariant(base, [presets.GENDER, presets.RACE], tokenizer, symmetrization=symmetrization)
    assert model.num_copies == {"equitune": 8, "multi_equitune": 6}[symmetrization]
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**batch).logits
        errors = [
            (model(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"]).logits[..., p]
             - reference).abs().max().item()
            for p in elements
        ]
        base_errors = [
            (base(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
             [..., p] - base(**batch).logits.log_softmax(-1)).abs().max().item()
            for p in elements[1:]
        ]
    assert max(errors) <= 1e-4, errors
    assert min(base_errors) > 1e-2  # negative control: the base model is not equivariant


def test_real_model_greedy_generation_is_equivariant_and_cache_safe(smollm, elements):
    base, tokenizer = smollm
    with pytest.warns(UserWarning):
        model = make_equivariant(base, [presets.GENDER, presets.RACE], tokenizer)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    ids = torch.cat([p[batch["input_ids"]] for p in elements])  # every transformed prompt in one batch
    mask = batch["attention_mask"].repeat(len(elements), 1)
    options = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **options).view(len(elements), len(PROMPTS), -1)
        uncached = model.generate(**batch, use_cache=False, **options)
        base_out = base.generate(input_ids=ids, attention_mask=mask, **options).view(len(elements), len(PROMPTS), -1)
    for p, moved in zip(elements, out):
        assert torch.equal(moved, p[out[0]])
    assert torch.equal(uncached, out[0])
    assert any(not torch.equal(moved, p[base_out[0]]) for p, moved in zip(elements, base_out))


def test_cli_prints_base_and_equivariant_continuations(smollm, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_model_and_tokenizer", lambda model, gguf_file=None: smollm)
    cli.main(["generate", "--prompt", "The woman worked as", "--prompt", "The man worked as",
              "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert "groups: gender (2) x race (4); 6 inner passes per token" in out
    assert out.count("| The woman worked as") == 2 and out.count("| The man worked as") == 2
    lines = [line.split("|", 1)[1] for line in out.splitlines() if line.startswith("  equivariant")]
    woman, man = (line.replace("The woman worked as", "").replace("The man worked as", "") for line in lines)
    swap = {" she": " he", " her": " his", " woman": " man", " She": " He", " Her": " His"}
    for a, b in swap.items():
        woman = woman.replace(a, b)
    assert woman == man  # the equivariant continuations are gender swaps of each other
