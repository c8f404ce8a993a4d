"""The public check: check_equivariance and `hf-equivariant check`."""

import pytest
import torch
from conftest import ARCHITECTURES, BPE_MIXED_PROMPTS, RACE_CLASSES, SEQ2SEQ_ARCHITECTURES, bpe_tokenizer
from test_word_action import GROUPS

import hf_equivariant_cli
from hf_equivariant import WordSwapGroup, check_equivariance, make_equivariant


@pytest.mark.parametrize("action", ["word", "token"])
def test_check_passes_for_every_element_and_names_the_worst_when_broken(action):
    bpe = bpe_tokenizer()
    model = make_equivariant(ARCHITECTURES["llama"](len(bpe)), GROUPS, bpe, action=action)
    inputs = dict(bpe(BPE_MIXED_PROMPTS, return_tensors="pt", padding=True))
    errors = check_equivariance(model, inputs)
    assert len(errors) == 2 * 3 * 2 and max(errors.values()) <= 1e-4
    assert "gender(1, 0) x race(0, 1, 2) x orientation(0, 1)" in errors
    with torch.no_grad():
        model.plan_mixing[0] = torch.eye(model.plan_mixing.shape[1])  # copy 0 stops reading its swapped scores
    with pytest.raises(AssertionError, match=r"element \S+\(.*has error"):
        check_equivariance(model, inputs)


def test_check_covers_seq2seq_encoder_and_decoder_ids():
    bpe = bpe_tokenizer(padding_side="right")
    model = make_equivariant(SEQ2SEQ_ARCHITECTURES["bart"](len(bpe)), GROUPS, bpe)
    ids = bpe(BPE_MIXED_PROMPTS, return_tensors="pt", padding=True)["input_ids"]
    assert max(check_equivariance(model, {"input_ids": ids, "decoder_input_ids": ids.flip(0)}).values()) <= 1e-4


def test_cli_check_reports_every_element(tokenizer, tmp_path, capsys):
    model = make_equivariant(ARCHITECTURES["gpt2"](len(tokenizer)), [WordSwapGroup("race", RACE_CLASSES)], tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    hf_equivariant_cli.main(["check", "--model", str(tmp_path)])
    out = capsys.readouterr().out
    assert "equivariant within 0.0001 for all 3 elements" in out and "race(2, 0, 1)" in out
    with pytest.raises(SystemExit) as exit:
        hf_equivariant_cli.main(["check", "--model", str(tmp_path / "missing")])
    assert exit.value.code == 2 and "no such folder" in capsys.readouterr().err
