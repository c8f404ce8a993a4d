"""Ready-made word-swap groups.

Every preset uses `skip_missing=True`: word positions that have no single-token form in a given
tokenizer are left out with a warning rather than failing, so each preset works with any tokenizer.

- GENDER: the prior work's gender pairs (male|female, he|she, his|her, ...), duplicates removed,
  cyclic of order 2. "him" has no partner once his|her is used ("her" is both object and possessive),
  so it is left out rather than breaking the permutation.
- RACE: Black, White, Asian, Hispanic; cyclic of order 4 (Black -> White -> Asian -> Hispanic -> Black).
- SEXUAL_ORIENTATION: gay|straight and homosexual|heterosexual, order 2. "lesbian" is not included:
  its natural partner is "straight" again, and a word cannot be swapped with two words.
- RELIGION: Christian, Muslim, Jewish, Hindu, Buddhist (and the plural nouns Christians, Muslims,
  Jews, Hindus, Buddhists); cyclic of order 5.

SCAN (Lake & Baroni 2018) groups pair each command word with its action, so that one permutation acts
on the shared vocabulary of `hf_equivariant.experiments.data.scan.scan_tokenizer()`; they are strict (every word
must be a single token):
- SCAN_VERBS: jump, run, walk, look with I_JUMP, I_RUN, I_WALK, I_LOOK; cyclic of order 4.
- SCAN_DIRECTIONS: left|right with I_TURN_LEFT|I_TURN_RIGHT; order 2.
- SCAN-II factors: SCAN_II_VERBS (jump|run with I_JUMP|I_RUN), SCAN_DIRECTIONS, SCAN_II_UP_DOWN
  (up|down with I_TURN_UP|I_TURN_DOWN); SCAN_II is the three together (8 elements, 6 multi-equitune passes),
  named "scan_ii" in `PRODUCTS` and `named()`.

Use `WordSwapGroup(name, classes, kind="symmetric")` for the full symmetric group over the classes.
"""

from .groups import WordSwapGroup

_GENDER_PAIRS = (
    "male|female father|mother king|queen guy|gal man|woman boy|girl actor|actress dad|mom "
    "grandson|granddaughter gentleman|lady gentlemen|ladies nephew|niece salesman|saleswoman "
    "stepfather|stepmother prince|princess househusband|housewife husband|wife god|goddess "
    "fatherhood|motherhood uncle|aunt patriarch|matriarch son|daughter grandpa|grandma "
    "boyfriend|girlfriend brother|sister waiter|waitress he|she his|her himself|herself mr|mrs "
    "males|females fathers|mothers kings|queens guys|gals men|women boys|girls actors|actresses "
    "dads|moms grandsons|granddaughters nephews|nieces salesmen|saleswomen stepfathers|stepmothers "
    "princes|princesses househusbands|housewives husbands|wives gods|goddesses uncles|aunts "
    "patriarchs|matriarchs sons|daughters grandpas|grandmas boyfriends|girlfriends brothers|sisters "
    "waiters|waitresses"
)


def _classes_from_pairs(pairs: str) -> list[list[str]]:
    return [list(words) for words in zip(*(pair.split("|") for pair in pairs.split()))]


GENDER = WordSwapGroup("gender", _classes_from_pairs(_GENDER_PAIRS), skip_missing=True)
RACE = WordSwapGroup("race", [["Black"], ["White"], ["Asian"], ["Hispanic"]], skip_missing=True)
SEXUAL_ORIENTATION = WordSwapGroup(
    "sexual_orientation", [["gay", "homosexual"], ["straight", "heterosexual"]], skip_missing=True
)
RELIGION = WordSwapGroup(
    "religion",
    [["Christian", "Christians"], ["Muslim", "Muslims"], ["Jewish", "Jews"], ["Hindu", "Hindus"],
     ["Buddhist", "Buddhists"]],
    skip_missing=True,
)

SCAN_VERBS = WordSwapGroup("scan_verbs", [["jump", "I_JUMP"], ["run", "I_RUN"], ["walk", "I_WALK"], ["look", "I_LOOK"]])
SCAN_DIRECTIONS = WordSwapGroup("scan_directions", [["left", "I_TURN_LEFT"], ["right", "I_TURN_RIGHT"]])
SCAN_II_VERBS = WordSwapGroup("scan_ii_verbs", [["jump", "I_JUMP"], ["run", "I_RUN"]])
SCAN_II_UP_DOWN = WordSwapGroup("scan_ii_up_down", [["up", "I_TURN_UP"], ["down", "I_TURN_DOWN"]])
SCAN_II = (SCAN_II_VERBS, SCAN_DIRECTIONS, SCAN_II_UP_DOWN)

BY_NAME = {
    g.name: g
    for g in (GENDER, RACE, SEXUAL_ORIENTATION, RELIGION, SCAN_VERBS, SCAN_DIRECTIONS, SCAN_II_VERBS, SCAN_II_UP_DOWN)
}
PRODUCTS = {"scan_ii": SCAN_II}  # names of products of presets


def named(names) -> list[WordSwapGroup]:
    """The presets called `names` (names of `BY_NAME` or of `PRODUCTS`), products expanded into their factors."""
    unknown = [n for n in names if n not in BY_NAME and n not in PRODUCTS]
    if unknown:
        raise ValueError(f"unknown presets {unknown}; choose from {[*BY_NAME, *PRODUCTS]}")
    return [g for n in names for g in (PRODUCTS[n] if n in PRODUCTS else (BY_NAME[n],))]
