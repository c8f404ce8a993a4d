"""SCAN and SCAN-II data: the generator and the splits against the official files, SCAN-II, the tokenizer.

The official files are looked up in SCAN_DATA_DIR, else in shared/data/scan beside the repository; the
tests that need them fail (not skip) when they are absent.
"""

import os
from collections import Counter
from pathlib import Path

import pytest

from hf_equivariant.experiments.data.scan import (
    SCAN_II_DIRECTIONS,
    SPLITS,
    generate_commands,
    interpret,
    load_scan,
    load_scan_ii,
    read_scan_file,
    scan_tokenizer,
)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scan"
DATA_DIR = Path(os.environ.get("SCAN_DATA_DIR") or DEFAULT_DATA_DIR)
OFFICIAL_FOLDERS = {
    "simple": "simple_split",
    "length": "length_split",
    "addprim_jump": "add_prim_split",
    "template_around_right": "template_split",
}
COUNTS = {  # train / test lines: the official files where present, the published sizes otherwise
    "simple": (16728, 4182),
    "length": (16990, 3920),
    "addprim_jump": (14670, 7706),
    "addprim_turn_left": (21890, 1208),
    "template_around_right": (15225, 4476),
    "template_jump_around_right": (18528, 1173),
    "template_opposite_right": (15225, 4476),
    "template_right": (15225, 4476),
}


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA_DIR / "tasks.txt").is_file():
        pytest.fail(f"official SCAN files not found in {DATA_DIR}: set SCAN_DATA_DIR to the folder holding tasks.txt")
    return DATA_DIR


def official(data_dir, name, part):
    return read_scan_file(data_dir / OFFICIAL_FOLDERS[name] / f"tasks_{part}_{name}.txt")


def rows(dataset):
    columns = dataset.to_dict()  # far faster than iterating a datasets Column
    return list(zip(columns["commands"], columns["actions"]))


def commands(dataset):
    return dataset.to_dict()["commands"]


def occurs(phrase, command):
    words = command.split()
    n = len(phrase.split())
    return any(" ".join(words[i : i + n]) == phrase for i in range(len(words)))


def test_generator_and_interpreter_equal_tasks_txt(data_dir):
    tasks = read_scan_file(data_dir / "tasks.txt")
    assert len(tasks) == len(set(tasks)) == 20910
    assert Counter(generate_commands()) == Counter(tasks)
    assert all(interpret(command) == actions for command, actions in tasks)


@pytest.mark.parametrize("name", ["length", "addprim_jump", "template_around_right"])
def test_rule_splits_equal_official_files(data_dir, name):
    dataset = load_scan(name)
    for part in ("train", "test"):
        assert Counter(rows(dataset[part])) == Counter(official(data_dir, name, part))


@pytest.mark.parametrize("name", SPLITS)
def test_split_sizes(name):
    dataset = load_scan(name)
    assert (dataset["train"].num_rows, dataset["test"].num_rows) == COUNTS[name]
    assert dataset["train"].column_names == ["commands", "actions"]


def test_official_simple_split_from_path(data_dir):
    train, test = official(data_dir, "simple", "train"), official(data_dir, "simple", "test")
    for path in (data_dir, data_dir / "simple_split", f"{data_dir}/simple_split/tasks"):
        dataset = load_scan("simple", path=path)
        assert rows(dataset["train"]) == train and rows(dataset["test"]) == test


def test_generated_simple_split_is_a_deterministic_partition():
    first, second = load_scan("simple"), load_scan("simple")
    train, test = rows(first["train"]), rows(first["test"])
    assert train == rows(second["train"]) and test == rows(second["test"])
    assert (len(train), len(test)) == (16728, 4182)
    assert not set(train) & set(test)
    assert Counter(train + test) == Counter(generate_commands())
    assert rows(load_scan("simple", seed=1)["test"]) != test


def test_template_rules_on_examples():
    def sets(name):
        dataset = load_scan(name)
        return set(commands(dataset["train"])), set(commands(dataset["test"]))

    train, test = sets("template_jump_around_right")
    assert {"jump around right", "walk twice after jump around right thrice"} <= test
    assert {"jump around left", "walk around right", "jump opposite right", "turn around left"} <= train
    for dropped in ("turn around right", "jump around right and turn around right twice"):
        assert dropped not in train | test

    train, test = sets("template_around_right")
    assert {"walk around right", "look around right twice and jump"} <= test
    assert {"walk around left", "turn opposite right"} <= train and "turn around right" not in train | test

    train, test = sets("template_opposite_right")
    assert {"jump opposite right", "run opposite right thrice after turn left"} <= test
    assert {"jump opposite left", "jump around right", "turn right"} <= train
    assert "turn opposite right" not in train | test

    train, test = sets("template_right")
    assert {"walk right", "turn left after look right twice"} <= test
    assert {"walk left", "walk around right", "turn opposite right"} <= train and "turn right" not in train | test


@pytest.mark.parametrize(
    ("name", "primitive", "copies"), [("addprim_jump", "jump", 1467), ("addprim_turn_left", "turn left", 2189)]
)
def test_add_primitive_rules(name, primitive, copies):
    dataset = load_scan(name)
    train, test = commands(dataset["train"]), commands(dataset["test"])
    counts = Counter(train)
    assert counts[primitive] == copies and copies / len(train) == pytest.approx(0.10)
    assert max(n for command, n in counts.items() if command != primitive) == 1
    assert all(occurs(primitive, c) for c in test) and primitive not in test
    assert not any(occurs(primitive, c) for c in train if c != primitive)
    if primitive == "turn left":
        assert "turn opposite left" in counts and "turn left twice" in test


def test_scan_ii():
    pairs = generate_commands(SCAN_II_DIRECTIONS)
    assert len(pairs) == len({command for command, _ in pairs}) == 73920
    every = [command for command, _ in pairs]
    dataset = load_scan_ii(seed=0)
    sizes = {key: split.num_rows for key, split in dataset.items()}
    assert sizes == {"train": 52884, "test_jump": 26948, "test_turn_left": 2288, "test_turn_up": 2288, "test": 30552}
    held_out = set()
    for primitive in ("jump", "turn left", "turn up"):
        expected = {c for c in every if occurs(primitive, c) and c != primitive}
        assert set(commands(dataset["test_" + primitive.replace(" ", "_")])) == expected
        held_out |= expected
    test = commands(dataset["test"])
    assert len(test) == len(set(test)) and set(test) == held_out
    train = Counter(commands(dataset["train"]))
    assert not set(train) & held_out
    for primitive in ("jump", "turn left", "turn up"):
        assert train[primitive] == 3173 and train[primitive] / train.total() == pytest.approx(0.06, abs=1e-4)
    assert len(train) == 73920 - 30552 and train.total() == 43365 + 3 * 3173
    reshuffled = rows(load_scan_ii(seed=1)["train"])
    assert rows(dataset["train"]) == rows(load_scan_ii(seed=0)["train"]) != reshuffled
    assert Counter(rows(dataset["train"])) == Counter(reshuffled)


def test_scan_ii_interpretations():
    actions = dict(generate_commands(SCAN_II_DIRECTIONS))
    by_hand = {
        "walk around up": " ".join(["I_TURN_UP I_WALK"] * 4),
        "turn opposite down twice after jump up": "I_TURN_UP I_JUMP" + " I_TURN_DOWN" * 4,
        "look left and run around down": "I_TURN_LEFT I_LOOK" + " I_TURN_DOWN I_RUN" * 4,
    }
    for command, expected in by_hand.items():
        assert interpret(command, SCAN_II_DIRECTIONS) == actions[command] == expected
    assert interpret("jump around left twice") == " ".join(["I_TURN_LEFT I_JUMP"] * 8)


@pytest.mark.parametrize(
    ("command", "word"),
    [
        ("walk up", "up"),
        ("fly left", "fly"),
        ("jump twice twice", "twice"),
        ("walk and run and look", "and"),
        ("walk left right", "right"),
    ],
)
def test_ungrammatical_command_names_the_word(command, word):
    with pytest.raises(ValueError, match=f"'{word}'"):
        interpret(command)


def test_incomplete_command():
    for command in ("turn", "walk and", "turn around"):
        with pytest.raises(ValueError, match="incomplete"):
            interpret(command)


def test_read_scan_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("IN: jump OUT: I_JUMP\n\nIN: walk left twice OUT: I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK\n")
    assert read_scan_file(path) == [("jump", "I_JUMP"), ("walk left twice", "I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK")]
    path.write_text("jump I_JUMP\n")
    with pytest.raises(ValueError, match="tiny.txt:1"):
        read_scan_file(path)


def test_tokenizer():
    tok = scan_tokenizer()
    vocab = tok.get_vocab()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, len(tok)) == (0, 1, 2, 26)
    assert tok("jump twice")["input_ids"] == [vocab["jump"], vocab["twice"], 1]
    assert tok("jump sideways")["input_ids"] == [vocab["jump"], 2, 1]
    words = {w for pair in generate_commands(SCAN_II_DIRECTIONS) for text in pair for w in text.split()}
    assert len(words) == 23 and words <= set(vocab)
    batch = tok(["walk around up", "jump"], text_target=["I_TURN_UP I_WALK", "I_JUMP"], padding=True)
    assert batch["labels"] == [[vocab["I_TURN_UP"], vocab["I_WALK"], 1], [vocab["I_JUMP"], 1, 0]]
    assert batch["input_ids"][1] == [vocab["jump"], 1, 0, 0]
    for text in ("jump around left twice and turn up", "I_TURN_LEFT I_JUMP I_TURN_DOWN"):
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
