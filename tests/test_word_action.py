"""The word action: with a sub-word tokenizer the group swaps whole words, never the pieces of longer words.

Checked against `ActionOracle` (conftest), which works from decoded strings only, on a byte-level BPE
tokenizer whose group tokens also occur as pieces ("Hispanics", "malevolent", "Blackstone", "Manning",
"heather", "salesman"). Equivariance on every architecture, action and setting is the shared tester's
(testing_common.py, run by test_common.py); this file tests what is particular to the word action.
"""

import json

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    BPE_GENDER_CLASSES,
    BPE_MIXED_PROMPTS,
    BPE_TIE_FREE_PROMPTS,
    ORIENTATION_CLASSES,
    RACE_CLASSES,
    SEQ2SEQ_ARCHITECTURES,
    ActionOracle,
    assert_no_glued_words,
    bpe_tokenizer,
    wrap,
)
from testing_common import EquivariantCommonTester, Setting, case
from transformers import AutoModelForCausalLM

from hf_equivariant import EquivariantModelForCausalLM, WordSwapGroup, make_equivariant

CLASS_LISTS = [BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]
GROUPS = [WordSwapGroup("gender", BPE_GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES),
          WordSwapGroup("orientation", ORIENTATION_CLASSES)]
PIECES = {"Hispanics": "His", "malevolent": " male", "Blackstone": " Black", "Manning": "Man", "heather": " he",
          "salesman": "man"}

@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def oracle(bpe):
    return ActionOracle(bpe, CLASS_LISTS, len(bpe))


def test_the_tokenizer_splits_longer_words_into_group_tokens_and_pieces(bpe):
    for word, piece in PIECES.items():
        ids = bpe.encode(f"the {word}" if piece.startswith(" ") else word, add_special_tokens=False)
        assert piece in [bpe.decode([i]) for i in ids] and len(ids) >= 3, word


def test_the_token_action_fails_the_word_oracle():
    """It swaps pieces too (the unwrapped model fails the oracle in the shared tester, test_common.py)."""
    tester, gpt2 = EquivariantCommonTester(), case("gpt2", Setting(action="word"))
    token_action = wrap(gpt2.base, gpt2.vocab.tokenizer, GROUPS, action="token")
    errors = tester.equivariance_errors(token_action, gpt2, tester.forward_inputs(gpt2, "right"),
                                        gpt2.vocab.elements()[1:], check_mask=False)
    assert min(errors.values()) > 1e-4, errors


def test_pieces_are_the_same_in_every_copy(bpe, oracle):
    model = wrap(ARCHITECTURES["gpt2"](len(bpe)), bpe, GROUPS, symmetrization="equitune")
    ids = bpe(BPE_MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    seen = []
    handle = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"]), with_kwargs=True)
    model.config.deduplicate = False
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    copies = seen[0].view(model.num_copies, *ids.shape)
    whole = torch.tensor([oracle.whole_words(row) for row in ids.tolist()])
    pieces = torch.isin(ids, torch.tensor(list(oracle.orbit_of))) & ~whole
    assert int(pieces.sum()) == len(PIECES) + 1  # the first piece of each longer word, and the "her" of heather
    assert (copies[:, pieces] == ids[pieces]).all()  # a piece is never swapped
    assert (copies[:, whole] != ids[whole]).any(dim=0).all()  # every whole group word is swapped in some copy


GENERATION_OPTIONS = [
    {"do_sample": False},
    {"do_sample": True, "top_k": 40, "num_return_sequences": 2},
    {"num_beams": 3, "do_sample": False, "num_return_sequences": 2},
]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("options", GENERATION_OPTIONS, ids=["greedy", "sampled", "beam"])
def test_generation_glues_nothing_and_cache_and_deduplication_change_nothing(bpe, oracle, architecture, options):
    model = wrap(ARCHITECTURES[architecture](len(bpe)), bpe, GROUPS)
    batch = bpe(BPE_TIE_FREE_PROMPTS, return_tensors="pt", padding=True)
    outputs = {}
    for use_cache, deduplicate in ((True, True), (True, False), (False, False)):
        model.config.deduplicate = deduplicate
        torch.manual_seed(0)
        outputs[use_cache, deduplicate] = model.generate(**batch, max_new_tokens=24, use_cache=use_cache, **options)
    reference = outputs[True, True]
    for other in outputs.values():
        assert torch.equal(other, reference)
    assert_no_glued_words(oracle, reference, batch["input_ids"].shape[1])


def test_continuing_from_a_cache_needs_the_preceding_token(bpe):
    model = wrap(ARCHITECTURES["gpt2"](len(bpe)), bpe, GROUPS)
    ids = bpe(["the Black man met Hispanics"], return_tensors="pt")["input_ids"]
    out = model(input_ids=ids[:, :-1], use_cache=True)
    with pytest.raises(ValueError, match="preceding_token_ids"):
        model(input_ids=ids[:, -1:], cache=out.cache)
    full = model(input_ids=ids).logits[:, -1]
    step = model(input_ids=ids[:, -1:], cache=out.cache, preceding_token_ids=ids[:, -2]).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_word_action_round_trips_and_old_checkpoints_load_as_token_action(bpe, tmp_path):
    batch = bpe(BPE_MIXED_PROMPTS, return_tensors="pt", padding=True)
    model = wrap(ARCHITECTURES["llama"](len(bpe)), bpe, GROUPS)
    assert model.config.action == "word" and model.acts_on_words
    model.save_pretrained(tmp_path / "word")
    loaded = EquivariantModelForCausalLM.from_pretrained(tmp_path / "word")
    assert loaded.config.action == "word" and "**word**" in (tmp_path / "word" / "README.md").read_text()
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)

    token_model = make_equivariant(model.model, GROUPS, bpe, action="token").eval()
    token_model.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    del config["action"], config["token_boundaries"]  # as saved before the word action existed
    config_file.write_text(json.dumps(config))
    old = EquivariantModelForCausalLM.from_pretrained(tmp_path / "old")
    assert old.config.action == "token" and not old.acts_on_words
    assert torch.equal(old(**batch).logits, token_model(**batch).logits)
    assert not torch.allclose(old(**batch).logits, model(**batch).logits)

    bpe.save_pretrained(tmp_path / "old")
    upgraded = EquivariantModelForCausalLM.from_pretrained(tmp_path / "old", action="word")
    assert torch.equal(upgraded(**batch).logits, model(**batch).logits)


def test_word_action_without_a_tokenizer_is_refused(bpe, tmp_path):
    factors = [g.resolve(bpe) for g in GROUPS]
    with pytest.raises(ValueError, match="tokenizer"):
        make_equivariant(ARCHITECTURES["gpt2"](len(bpe)), factors)
    model = make_equivariant(ARCHITECTURES["gpt2"](len(bpe)), factors, action="token")
    assert model.config.action == "token"
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no word boundaries"):  # the Auto path sets config fields only
        AutoModelForCausalLM.from_pretrained(tmp_path, action="word")


def test_word_level_tokenizers_act_as_before(tokenizer):
    """A word-level tokenizer has a boundary around every token: the word action is the token action."""
    base = ARCHITECTURES["gpt2"](len(tokenizer))
    groups = [WordSwapGroup("race", RACE_CLASSES)]
    word, token = (make_equivariant(base, groups, tokenizer, action=a) for a in ("word", "token"))
    assert word.config.token_boundaries["every_token_is_a_word"] and not word.acts_on_words
    batch = tokenizer(["the Black man worked as a"], return_tensors="pt")
    assert torch.equal(word(**batch).logits, token(**batch).logits)


def test_glued_words_counts_group_words_continued_by_a_piece(bpe):
    from hf_equivariant.boundaries import glued_words, token_boundaries

    before, after = token_boundaries(bpe, len(bpe))
    support = torch.tensor(sorted({t for g in GROUPS for t in g.resolve(bpe).support}))
    count = lambda text: glued_words(torch.tensor([bpe.encode(text)]), support, before, after)  # noqa: E731
    assert count("the Blackstone and heather") == 2  # " Black"+"s", " he"+"a"
    assert count("Hispanics met the Black man") == 1  # "His"+"p"
    assert count("a salesman, the Black man. His son") == 0  # "man" ends "salesman" but begins no word


def test_compiled_static_cache_generation_with_the_word_action(bpe, oracle):
    """The glue mask and the preceding token reach the compiled static-cache decoding steps (the static cache
    itself: the shared tester, test_common.py)."""
    from transformers import CompileConfig

    model = wrap(ARCHITECTURES["llama"](len(bpe)), bpe, GROUPS)
    batch = bpe(BPE_TIE_FREE_PROMPTS, return_tensors="pt", padding=True)
    dynamic = model.generate(**batch, max_new_tokens=8, do_sample=False)
    compile_config = CompileConfig(mode="default", dynamic=False)
    compile_config._compile_all_devices = True
    torch._dynamo.reset()
    static = model.generate(**batch, max_new_tokens=8, do_sample=False, cache_implementation="static",
                            compile_config=compile_config)
    assert torch.equal(static, dynamic)
    assert_no_glued_words(oracle, static, batch["input_ids"].shape[1])


def test_forms_that_begin_or_end_words_differently_are_dropped():
    from hf_equivariant import TokenSwapGroup
    from hf_equivariant.boundaries import word_forms_only

    group = TokenSwapGroup("g", "cyclic", [["a", "b"], ["c", "d"]], [(1, 2), (3, 4)], vocab_size=6)
    before = torch.tensor([True, True, True, True, False, True])  # token 4 continues a word, its partner 3 does not
    after = torch.ones(6, dtype=torch.bool)
    with pytest.warns(UserWarning, match="begin or end words differently"):
        (kept,) = word_forms_only([group], (before, after))
    assert kept.orbits == ((1, 2),)
    with pytest.raises(ValueError, match="none can be swapped"):
        word_forms_only([TokenSwapGroup("h", "cyclic", [["c"], ["d"]], [(3, 4)], vocab_size=6)], (before, after))


def test_resized_vocabulary_keeps_the_word_boundaries(bpe, tmp_path):
    from hf_equivariant import check_equivariance

    model = wrap(ARCHITECTURES["gpt2"](len(bpe)), bpe, GROUPS)
    model.resize_token_embeddings(len(bpe) + 3)  # added tokens stand alone: a boundary on both sides
    assert model.plan_before.shape == (len(bpe) + 3,) and model.plan_before[-3:].all()
    ids = bpe(BPE_MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    ids = torch.cat([ids, torch.full((len(ids), 1), len(bpe) + 1)], dim=1)
    assert max(check_equivariance(model, {"input_ids": ids}).values()) <= 1e-4
    model.save_pretrained(tmp_path)
    assert torch.equal(EquivariantModelForCausalLM.from_pretrained(tmp_path)(input_ids=ids).logits,
                       model(input_ids=ids).logits)


def test_logits_to_keep_as_positions(bpe):
    model = wrap(ARCHITECTURES["llama"](len(bpe)), bpe, GROUPS)
    ids = bpe(BPE_MIXED_PROMPTS[:2], return_tensors="pt", padding=True)["input_ids"]
    full = model(input_ids=ids).logits
    for keep in (torch.tensor([1, 4]), torch.tensor([0])):
        torch.testing.assert_close(model(input_ids=ids, logits_to_keep=keep).logits, full[:, keep])


def test_seq2seq_labels_ending_in_a_glued_piece_have_a_finite_loss():
    bpe = bpe_tokenizer(padding_side="right")
    model = wrap(SEQ2SEQ_ARCHITECTURES["bart"](len(bpe)), bpe, GROUPS)
    source = bpe(["the Black man"], return_tensors="pt")["input_ids"]
    labels = bpe(["the Blackstone"], add_special_tokens=False, return_tensors="pt")["input_ids"][:, :3]  # " Black" "s"
    assert bpe.decode(labels[0, -2:]) == " Blacks"
    assert torch.isfinite(model(input_ids=source, labels=labels).loss)


@pytest.mark.parametrize("option", [{"prompt_lookup_num_tokens": 2}, {"prefill_chunk_size": 2}])
def test_generation_modes_that_escape_the_glue_mask_are_refused(bpe, option):
    model = wrap(ARCHITECTURES["gpt2"](len(bpe)), bpe, GROUPS)
    with pytest.raises(ValueError, match=f"{next(iter(option))}: not supported with the word action"):
        model.generate(**bpe(["the Black man"], return_tensors="pt"), max_new_tokens=3, **option)


def test_added_tokens_are_read_from_their_text_unless_special():
    from hf_equivariant.boundaries import token_boundaries

    bpe = bpe_tokenizer()
    bpe.add_tokens(["ly", " zz"])
    bpe.add_special_tokens({"additional_special_tokens": ["<mask>"]})
    before, after = token_boundaries(bpe, len(bpe))
    ly, zz, mask = (bpe.convert_tokens_to_ids(t) for t in ("ly", " zz", "<mask>"))
    assert not before[ly] and before[zz] and before[mask] and after[mask]


