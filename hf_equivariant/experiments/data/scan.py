"""SCAN (Lake & Baroni, ICML 2018) and SCAN-II, generated from the grammar, as `datasets` objects.

Grammar, with the directions as a parameter (SCAN: left, right; SCAN-II adds up, down)::

    C -> S and S | S after S | S
    S -> V twice | V thrice | V
    V -> D[1] opposite D[2] | D[1] around D[2] | D | U
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump

[[u]] = I_<U>; [[turn d]] = I_TURN_<D>; [[u d]] = I_TURN_<D> [[u]]; [[x opposite d]] = I_TURN_<D> [[x d]];
[[x around d]] = [[x d]] x4; [[v twice]] = [[v]] x2; [[v thrice]] = [[v]] x3; [[s1 and s2]] = [[s1]] [[s2]];
[[s1 after s2]] = [[s2]] [[s1]]. SCAN: 34 V, 102 S, 20,910 commands (102 + 2 * 102**2); SCAN-II: 64 V,
192 S, 73,920 commands. Commands and actions are space-separated strings.

`load_scan(name)` splits (train / test lines). Generated splits equal the official files as multisets
where those exist (simple, length, addprim_jump, template_around_right), and have the published sizes
(TFDS catalog, HF `scan` card) otherwise. A phrase "occurs" in a command as a run of whole words.

- simple (16,728 / 4,182): a random 80/20 partition drawn with `random.Random(seed)`; it is not the
  official random split (pass `path=` to load that one).
- length (16,990 / 3,920): train holds the commands with at most 22 actions, test the rest (24 to 48).
- addprim_jump (14,670 / 7,706), addprim_turn_left (21,890 / 1,208): test holds every command in which
  the primitive ("jump", "turn left") occurs, except the bare primitive; train holds all other commands
  plus the bare primitive repeated to make up 10% of the lines, i.e. (other commands) / 9 copies:
  13,203 others + 1,467 "jump"; 19,701 others + 2,189 "turn left".
- template_around_right (15,225 / 4,476): test holds the commands where "<u> around right" occurs for a
  primitive u (walk, look, run, jump). The 1,209 commands where "turn around right" occurs are in
  neither set, so 20,910 - 4,476 - 1,209 = 15,225 train lines (Loula, Baroni & Lake 2018 hold out
  "Primitive around right"; "turn around right" is not one and is dropped).
- template_jump_around_right (18,528 / 1,173): held out "jump around right", dropped "turn around right".
- template_opposite_right (15,225 / 4,476): held out "<u> opposite right", dropped "turn opposite right".
- template_right (15,225 / 4,476): held out "<u> right", dropped "turn right".

Generated rows are sorted by (command, actions); rows read from official files keep the file's order.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SCAN_DIRECTIONS = ("left", "right")
SCAN_II_DIRECTIONS = ("left", "right", "up", "down")
PRIMITIVES = ("walk", "look", "run", "jump")
COMMAND_WORDS = (*PRIMITIVES, "turn", *SCAN_II_DIRECTIONS, "opposite", "around", "twice", "thrice", "and", "after")
ACTIONS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT", "I_TURN_UP", "I_TURN_DOWN")
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
SPLITS = (
    "simple", "length", "addprim_jump", "addprim_turn_left", "template_around_right",
    "template_jump_around_right", "template_opposite_right", "template_right",
)
SCAN_II_HELD_OUT = ("jump", "turn left", "turn up")

_REPEATS = {"twice": 2, "thrice": 3}
_ADD_PRIMITIVE = {"addprim_jump": "jump", "addprim_turn_left": "turn left"}
_TEMPLATES = {  # split: (held-out phrases, phrase whose commands are in neither set)
    "template_around_right": (tuple(f"{u} around right" for u in PRIMITIVES), "turn around right"),
    "template_jump_around_right": (("jump around right",), "turn around right"),
    "template_opposite_right": (tuple(f"{u} opposite right" for u in PRIMITIVES), "turn opposite right"),
    "template_right": (tuple(f"{u} right" for u in PRIMITIVES), "turn right"),
}
_FEATURES = Features({"commands": Value("string"), "actions": Value("string")})

Pair = tuple[str, str]


def interpret(command: str, directions: Sequence[str] = SCAN_DIRECTIONS) -> str:
    """The actions of `command`, e.g. "jump around left twice" -> "I_TURN_LEFT I_JUMP" repeated 8 times.

    Raises ValueError naming the first word that the grammar (with these directions) does not accept.
    """
    words = command.split()
    for i, word in enumerate(words):
        if word in ("and", "after"):
            first, second = _clause(words[:i], directions, command), _clause(words[i + 1 :], directions, command)
            return " ".join(first + second if word == "and" else second + first)
    return " ".join(_clause(words, directions, command))


def _clause(words: list[str], directions: Sequence[str], command: str) -> list[str]:
    """[[S]] for S -> V twice | V thrice | V."""
    times = _REPEATS.get(words[-1], 1) if words else 1
    return _verb(words[:-1] if times > 1 else words, directions, command) * times


def _verb(words: list[str], directions: Sequence[str], command: str) -> list[str]:
    """[[V]] for V -> x opposite d | x around d | x d | u, where x is a primitive u or "turn"."""
    if not words:
        raise ValueError(f"incomplete SCAN command {command!r}: a clause is empty")
    actor, *rest = words
    if actor not in (*PRIMITIVES, "turn"):
        raise ValueError(f"unexpected word {actor!r} in SCAN command {command!r}")
    act = [] if actor == "turn" else [f"I_{actor.upper()}"]
    if not rest and act:
        return act
    modifier = rest.pop(0) if rest and rest[0] in ("opposite", "around") else None
    if not rest:
        raise ValueError(f"incomplete SCAN command {command!r}: {' '.join(words)!r} needs a direction")
    if rest[0] not in directions or len(rest) > 1:
        word = rest[0] if rest[0] not in directions else rest[1]
        raise ValueError(f"unexpected word {word!r} in SCAN command {command!r}")
    turn = [f"I_TURN_{rest[0].upper()}"]
    step = turn + act
    return {None: step, "opposite": turn + step, "around": step * 4}[modifier]


def generate_commands(directions: Sequence[str] = SCAN_DIRECTIONS) -> tuple[Pair, ...]:
    """Every (command, actions) of the grammar, in grammar order: 20,910 for SCAN, 73,920 for SCAN-II."""
    return _generate(tuple(directions))


@functools.lru_cache(maxsize=None)
def _generate(directions: tuple[str, ...]) -> tuple[Pair, ...]:
    verbs = [*PRIMITIVES]
    verbs += [f"{x} {m}{d}" for x in (*PRIMITIVES, "turn") for m in ("", "opposite ", "around ") for d in directions]
    clauses = [(s, interpret(s, directions)) for v in verbs for s in (v, f"{v} twice", f"{v} thrice")]
    pairs = list(clauses)
    for c1, a1 in clauses:
        for c2, a2 in clauses:
            pairs += [(f"{c1} and {c2}", f"{a1} {a2}"), (f"{c1} after {c2}", f"{a2} {a1}")]
    return tuple(pairs)


def read_scan_file(path: str | Path) -> list[Pair]:
    """(command, actions) for each `IN: <command> OUT: <actions>` line of an official SCAN file."""
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                command, separator, actions = line.strip().partition(" OUT: ")
                if not (command.startswith("IN: ") and separator):
                    raise ValueError(f"{path}:{number}: not an 'IN: <command> OUT: <actions>' line: {line!r}")
                pairs.append((command[len("IN: ") :], actions))
    return pairs


def load_scan(name: str = "simple", path: str | Path | None = None, seed: int = 0) -> DatasetDict:
    """SCAN split `name` (one of `SPLITS`, see the module docstring) as a DatasetDict "train", "test".

    Without `path` the split is generated (`seed` only draws the "simple" split). With `path`, the official
    files `tasks_{train,test}_<name>.txt` are read: `path` is a folder searched recursively (the split's
    folder or the SCAN root) or a file prefix such as ".../simple_split/tasks".
    """
    if name not in SPLITS:
        raise ValueError(f"unknown SCAN split {name!r}; choose one of {SPLITS}")
    if path is None:
        train, test = _split(name, generate_commands(), seed)
    else:
        train, test = (read_scan_file(_official_file(path, part, name)) for part in ("train", "test"))
    return DatasetDict(train=_dataset(train), test=_dataset(test))


def load_scan_ii(seed: int = 0) -> DatasetDict:
    """SCAN-II with held-out primitives "jump", "turn left" and "turn up".

    test_jump (26,948), test_turn_left (2,288), test_turn_up (2,288): every command in which the primitive
    occurs, except the bare primitive; "test" (30,552) is their union. "train" (52,884 lines): the 43,365
    commands in no test set plus each bare primitive 3,173 times, so that each makes up 6.0% of the lines
    (copies = round(0.06 * others / (1 - 3 * 0.06)))). Train rows are shuffled with `random.Random(seed)`,
    test rows are sorted.
    """
    pairs = generate_commands(SCAN_II_DIRECTIONS)
    tests = {
        "test_" + primitive.replace(" ", "_"): sorted(
            p for p in pairs if _occurs(primitive, p[0]) and p[0] != primitive
        )
        for primitive in SCAN_II_HELD_OUT
    }
    held_out = {p for test in tests.values() for p in test}
    others = [p for p in pairs if p not in held_out and p[0] not in SCAN_II_HELD_OUT]
    copies = _copies(len(others), 0.06, len(SCAN_II_HELD_OUT))
    train = others + [(p, interpret(p, SCAN_II_DIRECTIONS)) for p in SCAN_II_HELD_OUT for _ in range(copies)]
    random.Random(seed).shuffle(train)
    splits = {"train": train, **tests, "test": sorted(held_out)}
    return DatasetDict({key: _dataset(rows) for key, rows in splits.items()})


def scan_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every SCAN and SCAN-II command word and action, appending </s>.

    Ids: <pad> 0, </s> 1, <unk> 2, then `COMMAND_WORDS` (3-17: walk look run jump turn left right up down
    opposite around twice thrice and after), then `ACTIONS` (18-25). Commands and actions share the
    vocabulary, so that one permutation can swap e.g. jump<->run and I_JUMP<->I_RUN together.
    """
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *COMMAND_WORDS, *ACTIONS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def _occurs(phrase: str, command: str) -> bool:
    return f" {phrase} " in f" {command} "


def _copies(others: int, share: float, primitives: int = 1) -> int:
    """Copies of each of `primitives` bare primitives so that each makes up `share` of the lines."""
    return round(share * others / (1 - primitives * share))


def _partition(pairs: Sequence[Pair], is_test: Callable[[str, str], bool]) -> tuple[list[Pair], list[Pair]]:
    train, test = [], []
    for command, actions in pairs:
        (test if is_test(command, actions) else train).append((command, actions))
    return train, test


def _split(name: str, pairs: Sequence[Pair], seed: int) -> tuple[list[Pair], list[Pair]]:
    if name == "simple":
        shuffled = list(pairs)
        random.Random(seed).shuffle(shuffled)
        n_test = round(0.2 * len(shuffled))
        train, test = shuffled[n_test:], shuffled[:n_test]
    elif name == "length":
        train, test = _partition(pairs, lambda command, actions: len(actions.split()) > 22)
    elif name in _ADD_PRIMITIVE:
        primitive = _ADD_PRIMITIVE[name]
        train, test = _partition(pairs, lambda command, actions: _occurs(primitive, command))
        train += [(primitive, interpret(primitive))] * _copies(len(train), 0.10)
        test.remove((primitive, interpret(primitive)))
    else:
        held_out, dropped = _TEMPLATES[name]
        kept = [p for p in pairs if not _occurs(dropped, p[0])]
        train, test = _partition(kept, lambda command, actions: any(_occurs(h, command) for h in held_out))
    return sorted(train), sorted(test)


def _official_file(path: str | Path, part: str, name: str) -> Path:
    filename = f"tasks_{part}_{name}.txt"
    if not Path(path).is_dir():
        return Path(f"{path}_{part}_{name}.txt")
    found = sorted(Path(path).rglob(filename))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one {filename} under {path}, found {len(found)}")
    return found[0]


def _dataset(pairs: Sequence[Pair]) -> Dataset:
    return Dataset.from_dict(
        {"commands": [c for c, _ in pairs], "actions": [a for _, a in pairs]}, features=_FEATURES
    )
