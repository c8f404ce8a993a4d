import itertools
import json
import warnings

import pytest
import torch
from conftest import (
    BPE_GENDER_CLASSES,
    BPE_MIXED_PROMPTS,
    BPE_TIE_FREE_PROMPTS,
    GENDER_CLASSES,
    ORIENTATION_CLASSES,
    RACE_CLASSES,
    bpe_tokenizer,
    word_tokenizer,
)

from hf_equivariant import SymmetryGroup, TokenSwapGroup, WordSwapGroup, boundaries, resolve_groups


def ids(tokenizer, *words):
    return [tokenizer.convert_tokens_to_ids(w) for w in words]


def test_cyclic_and_symmetric_elements():
    race = WordSwapGroup("race", RACE_CLASSES)
    assert race.order == 3
    assert WordSwapGroup("race", (words for words in RACE_CLASSES)).classes == race.classes  # any iterable
    sym = WordSwapGroup("race", RACE_CLASSES, kind="symmetric")
    assert sym.order == 6


def test_resolution_covers_every_single_token_form(tokenizer):
    group = WordSwapGroup("gender", [["man", "he"], ["woman", "she"]]).resolve(tokenizer)
    # plain and leading-space forms are the same word-level token; the capitalised forms are their own tokens
    assert set(group.orbits) == {
        tuple(ids(tokenizer, "man", "woman")),
        tuple(ids(tokenizer, "Man", "Woman")),
        tuple(ids(tokenizer, "he", "she")),
        tuple(ids(tokenizer, "He", "She")),
    }
    assert group.vocab_size == len(tokenizer)


def test_permutation_tables_inverses_and_canonicaliser(tokenizer):
    race = WordSwapGroup("race", RACE_CLASSES).resolve(tokenizer)
    black, white, asian = ids(tokenizer, "Black", "White", "Asian")
    tables = race.permutation_tables()
    assert tables.shape == (3, len(tokenizer))
    assert torch.equal(tables[0], torch.arange(len(tokenizer)))
    assert tables[1, black] == white and tables[1, white] == asian and tables[1, asian] == black
    assert tables[2, black] == asian  # g^2, not g: order-3 groups enumerate all three rotations
    for g in range(3):
        assert torch.equal(torch.sort(tables[g]).values, torch.arange(len(tokenizer)))  # a permutation
        assert torch.equal(tables[g][race.inverse_tables()[g]], torch.arange(len(tokenizer)))
    canon = race.canonicalizer()
    assert canon[black] == canon[white] == canon[asian] == black
    assert canon[5] == 5


def test_symmetric_group_tables_are_all_permutations(tokenizer):
    race = WordSwapGroup("race", RACE_CLASSES, kind="symmetric").resolve(tokenizer)
    triples = {tuple(t[ids(tokenizer, "Black", "White", "Asian")].tolist()) for t in race.permutation_tables()}
    assert len(triples) == 6


def test_dict_round_trip(tokenizer):
    group = WordSwapGroup("gender", GENDER_CLASSES).resolve(tokenizer)
    assert TokenSwapGroup.from_dict(group.to_dict()) == group


def test_forms_that_are_not_single_tokens_everywhere_are_skipped_with_one_warning():
    tokenizer = word_tokenizer(["man", "woman", "Man"])  # "Woman" is unknown
    with pytest.warns(UserWarning, match=r"'Man'\|'Woman'") as record:
        group = WordSwapGroup("gender", [["man"], ["woman"]]).resolve(tokenizer)
    assert len(record) == 1
    assert group.orbits == (tuple(ids(tokenizer, "man", "woman")),)


@pytest.mark.parametrize(
    "classes, message",
    [
        ([["man", "he"], ["woman"]], "equal length"),
        ([["man"]], "at least two classes"),
        ([["male", "males"], ["female", "female"]], "'female' is listed twice"),
        ([["man"], [" woman"]], "invalid word"),
    ],
)
def test_bad_word_lists(classes, message):
    with pytest.raises(ValueError, match=message):
        WordSwapGroup("gender", classes)


@pytest.mark.parametrize("classes", [["Black", "White"], ("Black", "White"), [["Black"], "White"], "BW"])
def test_classes_given_as_strings_are_refused(classes):
    # tuple("Black") is the letters B, l, a, c, k: a flat list would silently swap letters
    with pytest.raises(ValueError, match=r"each class must be a list or tuple of words, not a string.*write \[\["):
        WordSwapGroup("race", classes)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind 'dihedral'"):
        WordSwapGroup("race", RACE_CLASSES, kind="dihedral")


def test_word_without_single_token_form_is_named(tokenizer):
    with pytest.raises(ValueError, match="'househusband', 'housewife' have no single-token form"):
        WordSwapGroup("gender", [["man", "househusband"], ["woman", "housewife"]]).resolve(tokenizer)


def test_skip_missing_drops_the_position_with_a_warning(tokenizer):
    group = WordSwapGroup("gender", [["man", "househusband"], ["woman", "housewife"]], skip_missing=True)
    with pytest.warns(UserWarning, match="househusband\\|housewife"):
        resolved = group.resolve(tokenizer)
    assert tuple(ids(tokenizer, "man", "woman")) in resolved.orbits
    with pytest.raises(ValueError, match="no word has a single-token form"):
        WordSwapGroup("x", [["househusband"], ["housewife"]], skip_missing=True).resolve(tokenizer)


@pytest.mark.parametrize(
    "classes, vocab, kept, dropped",
    [
        # "LGBT" is its own capitalisation: the rows straight|LGBT and Straight|LGBT share LGBT
        ([["straight"], ["LGBT"]], ["straight", "Straight", "LGBT"], [("straight", "LGBT")], "'Straight'|'LGBT'"),
        ([["straight"], ["LGBT"], ["queer"]], ["straight", "Straight", "LGBT", "queer", "Queer"],
         [("straight", "LGBT", "queer")], "'Straight'|'LGBT'|'Queer'"),
        # the shared token may change class: Us|us, then Us|Us
        ([["Us"], ["us"]], ["Us", "us"], [("Us", "us")], "'Us'|'Us'"),
        # forms of other positions are kept
        ([["straight", "man"], ["LGBT", "woman"]], ["straight", "Straight", "LGBT", "man", "Man", "woman", "Woman"],
         [("straight", "LGBT"), ("man", "woman"), ("Man", "Woman")], "'Straight'|'LGBT'"),
    ],
)
def test_forms_repeating_a_token_of_the_same_words_are_left_out(classes, vocab, kept, dropped):
    tokenizer = word_tokenizer(vocab)
    with pytest.warns(UserWarning, match="repeat a token of another form of the same words") as record:
        group = WordSwapGroup("orientation", classes).resolve(tokenizer)
    assert dropped in str(record[0].message)
    assert set(group.orbits) == {tuple(ids(tokenizer, *row)) for row in kept}


def test_forms_of_different_positions_sharing_a_token_are_refused():
    # "He" is the capitalised form of position 0 and a word of position 1: a real conflict
    tokenizer = word_tokenizer(["he", "she", "He", "She", "Her"])
    with pytest.raises(ValueError, match=r"token 'He' would be swapped with two different tokens \('Her' and 'She'\)"):
        WordSwapGroup("gender", [["he", "He"], ["she", "Her"]]).resolve(tokenizer)


def test_token_mapped_to_two_tokens_is_refused():
    # The "her" trap: a lowercasing tokenizer reads "Her" as "her", which is then swapped with his and him.
    tokenizer = word_tokenizer(["his", "him", "her"], lowercase=True)
    with pytest.raises(ValueError, match=r"token 'her' would be swapped with two different tokens \('him' and 'his'\)"):
        WordSwapGroup("gender", [["his", "him"], ["her", "Her"]]).resolve(tokenizer)


def test_token_in_two_classes_is_refused():
    tokenizer = word_tokenizer(["black", "white"], lowercase=True)
    with pytest.raises(ValueError, match="token 'black' is in two classes"):
        WordSwapGroup("race", [["black"], ["white"], ["Black"]]).resolve(tokenizer)


def test_overlapping_factors_are_refused(tokenizer):
    gender = WordSwapGroup("gender", [["man", "gay"], ["woman", "straight"]])
    orientation = WordSwapGroup("orientation", [["gay"], ["straight"]])
    with pytest.raises(ValueError, match="'gender' and 'orientation' both contain \\['gay', 'straight'\\]"):
        resolve_groups([gender, orientation], tokenizer)
    # the same conflict between already resolved groups is caught on token ids
    resolved = [g.resolve(tokenizer) for g in (gender, orientation)]
    with pytest.raises(ValueError, match="both move the tokens \\['gay', 'straight'\\]"):
        resolve_groups(resolved, tokenizer)


def test_vocabulary_mismatches_are_refused(tokenizer):
    group = WordSwapGroup("race", RACE_CLASSES)
    with pytest.raises(ValueError, match=f"vocabulary of {len(tokenizer)} tokens but the model has 1000"):
        resolve_groups([group.resolve(tokenizer)], vocab_size=1000)
    with pytest.raises(ValueError, match=f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary only 10"):
        resolve_groups([group], tokenizer, vocab_size=10)
    with pytest.raises(ValueError, match="pass the tokenizer"):
        resolve_groups([group])
    with pytest.raises(ValueError, match="group names must be unique"):
        resolve_groups([group, group], tokenizer)


def test_hand_edited_tables_are_validated():
    with pytest.raises(ValueError, match="token ids must lie in"):
        TokenSwapGroup("race", "cyclic", [["a"], ["b"]], orbits=[[1, 99]], vocab_size=10)
    with pytest.raises(ValueError, match="token id 1 is in two classes"):
        TokenSwapGroup("race", "cyclic", [["a"], ["b"]], orbits=[[1, 1]], vocab_size=10)


# The word-swap group before it meets a tokenizer: the SymmetryGroup protocol on text.

BPE_GENDER = WordSwapGroup("gender", BPE_GENDER_CLASSES)
RACE_SYMMETRIC = WordSwapGroup("race", RACE_CLASSES, kind="symmetric")
LAW_TEXTS = [
    "Jackson said he saw a Black man. He, the White son of an Asian woman, hid his bike",
    "White. Black: Asian-Black (White)",
    "Blackstone Whitehall Asians heather salesman",
    "",
]


def test_word_swap_groups_follow_the_protocol_before_a_tokenizer():
    for group in (BPE_GENDER, RACE_SYMMETRIC):
        assert isinstance(group, SymmetryGroup)
        assert group.elements[0] == tuple(range(len(group.classes))) and group.order == len(group.elements)
    assert RACE_SYMMETRIC.order == 6 and len(set(RACE_SYMMETRIC.elements)) == 6


def test_word_action_on_text_for_every_element():
    text = "Jackson said he saw a man. He, a son of his mother, is male; heather and salesmen stay."
    assert BPE_GENDER.act(text, 0) == text
    assert BPE_GENDER.act(text, 1) == (
        "Jackson said she saw a woman. She, a daughter of her mother, is female; heather and salesmen stay.")
    race = WordSwapGroup("race", RACE_CLASSES)  # cyclic: Black -> White -> Asian -> Black
    text = "Black, White and Asian; Blackstone and Whitehall stay, black is no form, Black-White is two words"
    expected = [
        text,
        "White, Asian and Black; Blackstone and Whitehall stay, black is no form, White-Asian is two words",
        "Asian, Black and White; Blackstone and Whitehall stay, black is no form, Asian-Black is two words",
    ]
    assert race.act(text, torch.arange(3)) == expected  # copy-major, as the protocol says
    assert race.act([text, "Asian"], 1) == [expected[1], "Black"]  # a batch of texts keeps its form
    assert [race.act(text, k) for k in range(3)] == expected


def test_word_action_covers_capitals_underscores_and_leaves_a_word_that_is_its_own_capital():
    verbs = WordSwapGroup("scan_verbs", [["jump", "I_JUMP"], ["run", "I_RUN"]])
    assert verbs.act("Jump twice: jump I_JUMP jumped I_JUMPS", 1) == "Run twice: run I_RUN jumped I_JUMPS"
    orientation = WordSwapGroup("orientation", [["straight"], ["LGBT"]])
    assert orientation.text_orbits == (("straight", "LGBT"),)  # Straight|LGBT would send LGBT to two texts
    assert orientation.act("Straight: straight and LGBT", 1) == "Straight: LGBT and straight"


def compose(group, g, h):
    """The index of g o h (h first) in the group's elements."""
    return group.elements.index(tuple(group.elements[g][c] for c in group.elements[h]))


def test_word_action_on_text_follows_the_group_laws():
    for group in (BPE_GENDER, RACE_SYMMETRIC):
        inverse = [next(k for k in range(group.order) if compose(group, g, k) == 0) for g in range(group.order)]
        for text in LAW_TEXTS:
            assert group.act(text, 0) == text
            for g in range(group.order):
                assert group.act(group.act(text, g), inverse[g]) == text
                for h in range(group.order):
                    assert group.act(group.act(text, h), g) == group.act(text, compose(group, g, h))
    # the laws are not vacuous: distinct elements move the first text differently
    assert len(set(RACE_SYMMETRIC.act(LAW_TEXTS[0], range(6)))) == 6


def test_text_canonicaliser_is_orbit_invariant_and_in_the_orbit():
    for group in (BPE_GENDER, RACE_SYMMETRIC):
        for text in LAW_TEXTS:
            orbit = group.act(text, range(group.order))
            assert {group.canonicalize(moved) for moved in orbit} == {group.canonicalize(text)}
            assert group.canonicalize(text) in orbit
    race = WordSwapGroup("race", RACE_CLASSES)
    # every word to class 0 (Black and Black) would not be in the orbit; the least text of the orbit is
    assert race.canonicalize(["White and Asian", "Black and White"]) == ["Asian and Black"] * 2


def test_word_group_dict_round_trip_and_its_output_action_needs_a_tokenizer(tokenizer):
    for group in (BPE_GENDER, RACE_SYMMETRIC, WordSwapGroup("race", RACE_CLASSES, skip_missing=True)):
        data = json.loads(json.dumps(group.to_dict()))
        assert WordSwapGroup.from_dict(data) == group and set(data) == {"name", "classes", "kind", "skip_missing"}
    race = WordSwapGroup("race", RACE_CLASSES)
    assert torch.equal(race.output_permutations(tokenizer), race.resolve(tokenizer).permutation_tables())
    with pytest.raises(ValueError, match="'race' is given as words: .*pass the model's tokenizer"):
        race.output_permutations()


def test_token_group_takes_its_elements_from_its_word_group(tokenizer):
    resolved = RACE_SYMMETRIC.resolve(tokenizer)
    assert resolved.word_group == RACE_SYMMETRIC and resolved.elements == RACE_SYMMETRIC.elements
    black, white, asian, the = ids(tokenizer, "Black", "White", "Asian", "the")
    # the token action of element k on ids is the word action of element k on their text
    text = "the Black White Asian"
    copies = resolved.act(torch.tensor([the, black, white, asian]), torch.arange(6))
    assert [tokenizer.decode(c) for c in copies] == RACE_SYMMETRIC.act(text, range(6))


def test_word_action_on_text_is_the_wrappers_word_action_on_ids():
    """On a byte-level BPE tokenizer whose group tokens are also pieces of longer words (Hispanics, Blackstone,
    heather, salesman): decoding the ids moved by the word action (boundaries) gives the text moved by act."""
    groups = [BPE_GENDER, WordSwapGroup("race", RACE_CLASSES), WordSwapGroup("orientation", ORIENTATION_CLASSES)]
    bpe = bpe_tokenizer()
    before, after = boundaries.token_boundaries(bpe, len(bpe))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forms that are not single tokens
        factors = boundaries.word_forms_only(resolve_groups(groups, bpe), (before, after))
    prompts = BPE_MIXED_PROMPTS + BPE_TIE_FREE_PROMPTS
    ids = bpe(prompts, return_tensors="pt", padding=True)["input_ids"]
    tables = [f.permutation_tables() for f in factors]
    for choice in itertools.product(*(range(g.order) for g in groups)):
        permutation = torch.arange(len(bpe))
        for table, k in zip(tables, choice):
            permutation = table[k][permutation]
        moved = bpe.batch_decode(boundaries.act_on_words(ids, permutation, before, after), skip_special_tokens=True)
        expected = prompts
        for group, k in zip(groups, choice):
            expected = group.act(expected, k)
        assert moved == expected, choice
    assert len({tuple(groups[1].act(prompts, k)) for k in range(3)}) == 3  # the prompts do move


@pytest.mark.parametrize("kind", ["cyclic", "symmetric"])
def test_listing_another_class_first_keeps_the_group_and_moves_class_zero(kind):
    group = WordSwapGroup("race", [["Black"], ["White"], ["Asian"], ["Hispanic"]], kind=kind)
    rotated = group.with_class_first("Asian")
    assert rotated.classes == (("Asian",), ("Hispanic",), ("Black",), ("White",))
    text = "the Black cat, the White dog, the Asian bird and the Hispanic fish"
    # the same maps on text, listed in another order: equitune, equizero and lambda_equitune do not change
    assert sorted(group.act(text, range(group.order))) == sorted(rotated.act(text, range(rotated.order)))
    assert rotated.act(text, 0) == text


def test_listing_a_word_no_class_holds_first_is_refused():
    with pytest.raises(ValueError, match=r"group 'race' has no word 'Purple'"):
        WordSwapGroup("race", [["Black"], ["White"]]).with_class_first("Purple")
