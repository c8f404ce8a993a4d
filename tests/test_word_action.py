"""The word action: with a sub-word tokenizer the group swaps whole words, never the pieces of longer words.

Checked against `WordActionOracle` (conftest), which works from decoded strings only, on a byte-level BPE
tokenizer whose group tokens also occur as pieces ("Hispanics", "malevolent", "Blackstone", "Manning",
"heather", "salesman").
"""

import json

import pytest
import torch
from conftest import (
    ALL_ARCHITECTURES,
    ARCHITECTURES,
    BPE_GENDER_CLASSES,
    ORIENTATION_CLASSES,
    RACE_CLASSES,
    SEQ2SEQ_ARCHITECTURES,
    WordActionOracle,
    all_elements,
    assert_no_glued_words,
    assert_word_equivariant,
    bpe_tokenizer,
)
from transformers import AutoModelForCausalLM

from hf_equivariant import EquivariantModelForCausalLM, WordSwapGroup, make_equivariant

CLASS_LISTS = [BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES]
GROUPS = [WordSwapGroup("gender", BPE_GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES),
          WordSwapGroup("orientation", ORIENTATION_CLASSES)]
# Whole words and pieces: "His" starts "Hispanics", " male" starts "malevolent", " Black" starts "Blackstone",
# "Man" starts "Manning", " he" starts "heather" and "her" ends it, "man" ends "salesman".
MIXED_PROMPTS = ["Hispanics met the Black man", "the malevolent Blackstone saw her son",
                 "Manning and heather, a gay salesman", "Man, he said. His White son"]
PIECES = {"Hispanics": "His", "malevolent": " male", "Blackstone": " Black", "Manning": "Man", "heather": " he",
          "salesman": "man"}
# A whole word of every factor, so that no element but the identity fixes the prompt (no exact ties).
TIE_FREE_PROMPTS = ["the gay Black man met Hispanics", "Manning saw the straight Asian woman", "He said: White, gay"]


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def oracle(bpe):
    return WordActionOracle(bpe, CLASS_LISTS, len(bpe))


def wrapped(factory, tokenizer, **options):
    base = factory(len(tokenizer))
    base.generation_config.forced_eos_token_id = None
    return make_equivariant(base, GROUPS, tokenizer, **options).eval()


def test_the_tokenizer_splits_longer_words_into_group_tokens_and_pieces(bpe):
    for word, piece in PIECES.items():
        ids = bpe.encode(f"the {word}" if piece.startswith(" ") else word, add_special_tokens=False)
        assert piece in [bpe.decode([i]) for i in ids] and len(ids) >= 3, word


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("symmetrization", ["equitune", "multi_equitune"])
@pytest.mark.parametrize("average", ["log_probs", "logits", "probs"])
def test_word_action_is_exactly_equivariant_for_every_element(bpe, oracle, architecture, symmetrization, average):
    model = wrapped(ARCHITECTURES[architecture], bpe, symmetrization=symmetrization, average=average)
    ids = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    assert max(assert_word_equivariant(model, oracle, ids, all_elements(CLASS_LISTS))) <= 1e-4


@pytest.mark.parametrize("action", ["token", None])
def test_negative_controls_fail_the_word_oracle(bpe, oracle, action):
    """The token action (it swaps pieces too) and the unwrapped model are not word-equivariant."""
    ids = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    base = ARCHITECTURES["gpt2"](len(bpe))
    model = make_equivariant(base, GROUPS, bpe, action=action).eval() if action else base
    for shifts in all_elements(CLASS_LISTS)[1:]:
        with pytest.raises(AssertionError):
            assert_word_equivariant(model, oracle, ids, [shifts], check_mask=False)


def test_pieces_are_the_same_in_every_copy(bpe, oracle):
    model = wrapped(ARCHITECTURES["gpt2"], bpe, symmetrization="equitune")
    ids = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
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
    model = wrapped(ARCHITECTURES[architecture], bpe)
    batch = bpe(TIE_FREE_PROMPTS, return_tensors="pt", padding=True)
    outputs = {}
    for use_cache, deduplicate in ((True, True), (True, False), (False, False)):
        model.config.deduplicate = deduplicate
        torch.manual_seed(0)
        outputs[use_cache, deduplicate] = model.generate(**batch, max_new_tokens=24, use_cache=use_cache, **options)
    reference = outputs[True, True]
    for other in outputs.values():
        assert torch.equal(other, reference)
    assert_no_glued_words(oracle, reference, batch["input_ids"].shape[1])


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_greedy_generation_is_word_equivariant(bpe, oracle, architecture):
    """generate(g.x) == g.generate(x) for every element, all moved prompts in one left-padded batch."""
    model = wrapped(ARCHITECTURES[architecture], bpe)
    rows = bpe(TIE_FREE_PROMPTS, add_special_tokens=False)["input_ids"]
    elements = all_elements(CLASS_LISTS)
    moved = [{"input_ids": oracle.act(row, shifts)} for shifts in elements for row in rows]
    batch = bpe.pad(moved, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    for k, (shifts, row) in enumerate((shifts, row) for shifts in elements for row in rows):
        generated = out[k, batch["input_ids"].shape[1] - len(row):].tolist()
        identity = out[elements.index((0, 0, 0)) * len(rows) + rows.index(row)]
        assert generated == oracle.act(identity[batch["input_ids"].shape[1] - len(row):].tolist(), shifts)


@pytest.mark.parametrize("architecture", sorted(SEQ2SEQ_ARCHITECTURES))
def test_seq2seq_word_action_on_encoder_and_decoder_ids(architecture):
    bpe = bpe_tokenizer(padding_side="right")
    oracle = WordActionOracle(bpe, CLASS_LISTS, len(bpe))
    model = wrapped(SEQ2SEQ_ARCHITECTURES[architecture], bpe)
    source = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    target = bpe(MIXED_PROMPTS[::-1], return_tensors="pt", padding=True)["input_ids"]
    for shifts in all_elements(CLASS_LISTS):
        act = lambda ids: torch.tensor([oracle.act(r, shifts) for r in ids.tolist()])  # noqa: E731
        with torch.no_grad():
            y = model(input_ids=source, decoder_input_ids=target).logits
            y_moved = model(input_ids=act(source), decoder_input_ids=act(target)).logits
        perms = torch.stack([oracle.output_permutations(r, shifts) for r in target.tolist()])
        glued = torch.stack([oracle.glued(r) for r in target.tolist()])
        back = y_moved.gather(-1, perms)
        assert torch.equal(torch.isneginf(y), glued) and torch.equal(torch.isneginf(back), glued)
        assert (back - y).masked_fill(glued, 0).abs().max() <= 1e-4
    generated = model.generate(input_ids=source, max_new_tokens=12, do_sample=False)
    assert_no_glued_words(oracle, generated, 1)


def test_continuing_from_a_cache_needs_the_preceding_token(bpe):
    model = wrapped(ARCHITECTURES["gpt2"], bpe)
    ids = bpe(["the Black man met Hispanics"], return_tensors="pt")["input_ids"]
    out = model(input_ids=ids[:, :-1], use_cache=True)
    with pytest.raises(ValueError, match="preceding_token_ids"):
        model(input_ids=ids[:, -1:], cache=out.cache)
    full = model(input_ids=ids).logits[:, -1]
    step = model(input_ids=ids[:, -1:], cache=out.cache, preceding_token_ids=ids[:, -2]).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_word_action_round_trips_and_old_checkpoints_load_as_token_action(bpe, tmp_path):
    batch = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)
    model = wrapped(ARCHITECTURES["llama"], bpe)
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


@pytest.mark.parametrize("compiled", [False, True], ids=["static", "compiled-static"])
def test_static_cache_generation_with_the_word_action(bpe, oracle, compiled):
    """The glue mask and the preceding token reach the (compiled) static-cache decoding steps."""
    from transformers import CompileConfig

    model = wrapped(ARCHITECTURES["llama"], bpe)
    batch = bpe(TIE_FREE_PROMPTS, return_tensors="pt", padding=True)
    dynamic = model.generate(**batch, max_new_tokens=8, do_sample=False)
    options = {}
    if compiled:
        options["compile_config"] = CompileConfig(mode="default", dynamic=False)
        options["compile_config"]._compile_all_devices = True
        torch._dynamo.reset()
    static = model.generate(**batch, max_new_tokens=8, do_sample=False, cache_implementation="static", **options)
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

    model = wrapped(ARCHITECTURES["gpt2"], bpe)
    model.resize_token_embeddings(len(bpe) + 3)  # added tokens stand alone: a boundary on both sides
    assert model.plan_before.shape == (len(bpe) + 3,) and model.plan_before[-3:].all()
    ids = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    ids = torch.cat([ids, torch.full((len(ids), 1), len(bpe) + 1)], dim=1)
    assert max(check_equivariance(model, {"input_ids": ids}).values()) <= 1e-4
    model.save_pretrained(tmp_path)
    assert torch.equal(EquivariantModelForCausalLM.from_pretrained(tmp_path)(input_ids=ids).logits,
                       model(input_ids=ids).logits)


def test_logits_to_keep_as_positions(bpe):
    model = wrapped(ARCHITECTURES["llama"], bpe)
    ids = bpe(MIXED_PROMPTS[:2], return_tensors="pt", padding=True)["input_ids"]
    full = model(input_ids=ids).logits
    for keep in (torch.tensor([1, 4]), torch.tensor([0])):
        torch.testing.assert_close(model(input_ids=ids, logits_to_keep=keep).logits, full[:, keep])


def test_seq2seq_labels_ending_in_a_glued_piece_have_a_finite_loss():
    bpe = bpe_tokenizer(padding_side="right")
    model = wrapped(SEQ2SEQ_ARCHITECTURES["bart"], bpe)
    source = bpe(["the Black man"], return_tensors="pt")["input_ids"]
    labels = bpe(["the Blackstone"], add_special_tokens=False, return_tensors="pt")["input_ids"][:, :3]  # " Black" "s"
    assert bpe.decode(labels[0, -2:]) == " Blacks"
    assert torch.isfinite(model(input_ids=source, labels=labels).loss)


@pytest.mark.parametrize("option", [{"prompt_lookup_num_tokens": 2}, {"prefill_chunk_size": 2}])
def test_generation_modes_that_escape_the_glue_mask_are_refused(bpe, option):
    model = wrapped(ARCHITECTURES["gpt2"], bpe)
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


@pytest.mark.parametrize("architecture", sorted(ALL_ARCHITECTURES))
def test_every_causal_architecture_is_word_equivariant_in_forward_and_generation(bpe, oracle, architecture):
    """Forward scores for three elements (one per factor and their product) and greedy generation with a
    left-padded batch, on every tiny causal architecture, against the word oracle."""
    model = wrapped(ALL_ARCHITECTURES[architecture], bpe)
    ids = bpe(MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    assert max(assert_word_equivariant(model, oracle, ids, [(1, 0, 0), (0, 2, 0), (1, 1, 1)])) <= 1e-4
    rows = bpe(TIE_FREE_PROMPTS, add_special_tokens=False)["input_ids"]
    moved = [{"input_ids": oracle.act(row, shifts)} for shifts in [(0, 0, 0), (1, 2, 1)] for row in rows]
    batch = bpe.pad(moved, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    width = batch["input_ids"].shape[1]
    for k, row in enumerate(rows):
        identity = out[k, width - len(row):].tolist()
        assert out[len(rows) + k, width - len(row):].tolist() == oracle.act(identity, (1, 2, 1))
    assert_no_glued_words(oracle, out, width)
