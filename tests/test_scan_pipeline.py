"""SCAN groups on the SCAN vocabulary, equivariance of seq2seq wrappers on SCAN, and a tiny experiment run."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SEQ2SEQ_ARCHITECTURES, ActionOracle, all_elements
from datasets import Dataset

import hf_equivariant_cli
from hf_equivariant import make_equivariant, presets, resolve_groups
from hf_equivariant.experiments.data.scan import scan_tokenizer
from hf_equivariant.experiments.scan_experiment import exact_match

SCAN_II_CLASSES = [group.classes for group in presets.SCAN_II]
# Each command holds a word of every factor: a command fixed by some element (say, no up/down word) gets
# exactly tied scores for the words that element swaps, and greedy decoding breaks such ties by token id.
COMMANDS = ["jump around left twice after walk up", "run opposite up after walk right",
            "look down thrice and jump left"]


@pytest.fixture(scope="module")
def tokenizer():
    return scan_tokenizer()


def test_scan_groups_pair_each_word_with_its_action(tokenizer):
    verbs = presets.SCAN_VERBS.resolve(tokenizer)
    words = {tuple(tokenizer.convert_ids_to_tokens(list(orbit))) for orbit in verbs.orbits}
    assert words == {("jump", "run", "walk", "look"), ("I_JUMP", "I_RUN", "I_WALK", "I_LOOK")}
    factors = resolve_groups(presets.SCAN_II, tokenizer)
    assert [f.order for f in factors] == [2, 2, 2]


@pytest.mark.parametrize("architecture", sorted(SEQ2SEQ_ARCHITECTURES))
@pytest.mark.parametrize("symmetrization, copies", [("equitune", 8), ("multi_equitune", 6), ("canonicalize", 8)])
def test_scan_ii_wrappers_are_equivariant(tokenizer, architecture, symmetrization, copies):
    base = SEQ2SEQ_ARCHITECTURES[architecture](len(tokenizer))
    base.generation_config.forced_eos_token_id = None
    model = make_equivariant(base, list(presets.SCAN_II), tokenizer, symmetrization=symmetrization).eval()
    assert model.num_copies == copies
    batch = tokenizer(COMMANDS, return_tensors="pt", padding=True)
    decoder_ids = torch.randint(3, len(tokenizer), (len(COMMANDS), 5))
    reference = model(**batch, decoder_input_ids=decoder_ids).logits
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for g in all_elements(SCAN_II_CLASSES):
        p = ActionOracle(tokenizer, SCAN_II_CLASSES, len(tokenizer), "token").permutation(g)
        moved = model(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"],
                      decoder_input_ids=p[decoder_ids]).logits
        assert (moved[..., p] - reference).abs().max() <= 1e-4
        assert torch.equal(model.generate(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"],
                                          max_new_tokens=6, do_sample=False), p[generated])


def test_exact_match_generates_each_command_once_and_compares_whole_sequences(tokenizer):
    """Two overlapping test sets: the shared command is generated once, the commands go shortest target first, and
    a prediction one action short is wrong."""
    def rows(pairs):
        return Dataset.from_list([dict(tokenizer(c, text_target=a)) for c, a in pairs])

    answers = {"jump": "I_JUMP", "jump twice": "I_JUMP", "walk left": "I_TURN_LEFT I_WALK"}  # "jump twice": short
    tests = {"first": rows([("jump twice", "I_JUMP I_JUMP"), ("jump", "I_JUMP")]),
             "second": rows([("jump", "I_JUMP"), ("walk left", "I_TURN_LEFT I_WALK")])}
    asked = []

    def predict(dataset, **kwargs):
        commands = [tokenizer.decode(ids, skip_special_tokens=True) for ids in dataset["input_ids"]]
        asked.append(commands)
        outputs = [tokenizer(text_target=answers[c])["input_ids"] for c in commands]
        width = max(map(len, outputs))  # padded with -100, as Seq2SeqTrainer pads them
        return SimpleNamespace(predictions=np.array([ids + [-100] * (width - len(ids)) for ids in outputs]))

    accuracy = exact_match(SimpleNamespace(predict=predict), tests, tokenizer)
    assert asked == [["jump", "jump twice", "walk left"]]
    assert accuracy == {"first": 0.5, "second": 1.0}


def test_tiny_experiment_runs_every_stage_through_the_cli(capsys, tmp_path):
    hf_equivariant_cli.main(["scan", "--split", "addprim_jump", "--groups", "scan_verbs", "--seeds", "0",
                             "--pretrain-epochs", "1", "--finetune-epochs", "1", "--max-train-examples", "64",
                             "--max-eval-examples", "8", "--d-model", "32", "--layers", "1", "--symmetrization",
                             "equitune,multi_equitune,canonicalize", "--out", str(tmp_path / "scan.md")])
    table, stages = capsys.readouterr()
    assert "| model | inner passes | test exact match (%) | train s | eval s |" in table
    for stage, passes in [("pretrained", 1), ("equitune zero-shot", 4), ("equitune fine-tuned", 4),
                          ("multi_equitune zero-shot", 4), ("multi_equitune fine-tuned", 4),
                          ("canonicalize zero-shot", 1), ("canonicalize fine-tuned", 1)]:
        assert f"| {stage} | {passes} |" in table
    labels = [line for line in stages.splitlines() if line.startswith("[seed 0: ")]
    assert labels == ["[seed 0: pretraining]", "[seed 0: pretrained: evaluating]",
                      *(f"[seed 0: {method}: {label}]" for method in ("equitune", "multi_equitune", "canonicalize")
                        for label in ("zero-shot evaluation", "fine-tuning", "evaluating the fine-tuned model"))]
    written = (tmp_path / "scan.md").read_text()
    assert written.startswith("Reproduce: `hf-equivariant scan --split addprim_jump")
    assert table[table.index("| model |"):].strip() in written  # stdout also holds the trainers' logs


@pytest.mark.parametrize("symmetrizations", [(), ("equitune",)])
def test_scan_ii_report_without_both_compared_methods(symmetrizations):
    """examples/scan_equitune.py's section: the equitune / multi_equitune time ratio needs both methods' fine-tuned
    stages; a SCAN-II run of the variants alone (`--symmetrizations ''`) or of one method reports without it."""
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import scan_equitune

    config = dataclasses.replace(scan_equitune.EXPERIMENTS["scan_ii_canonical_class"], seeds=(0,),
                                 symmetrizations=symmetrizations)
    variant = [{"seed": 0, "stage": f"multi_equitune (seen class first) {stage}", "passes": 6, "train_seconds": 2.0,
                "eval_seconds": 1.0, "test": 0.5} for stage in ("zero-shot", "fine-tuned")]
    compared = [{**variant[1], "stage": f"{name} fine-tuned", "passes": passes, "train_seconds": seconds}
                for name, passes, seconds in [("equitune", 8, 3.0), ("multi_equitune", 6, 2.0)]]
    rows = [row for row in compared if row["stage"].split()[0] in symmetrizations] + variant
    text = scan_equitune.section("scan_ii_canonical_class", config, rows, 60.0, "python examples/scan_equitune.py",
                                 "CPU")
    assert "| multi_equitune (seen class first) fine-tuned | 6 | 50.0 ± 0.0 | 2 | 1 |" in text
    assert "Variant: multi_equitune (seen class first) = multi_equitune over scan_ii_verbs (class 0: run)" in text
    assert "time ratio" not in text
    # with both methods' fine-tuned stages the ratio is reported, as before
    assert "Measured time ratio equitune / multi_equitune (8 vs 6 inner passes): fine-tuning 1.50x" in \
        scan_equitune.section("scan_ii_canonical_class", config, compared + variant, 60.0, "python", "CPU")
