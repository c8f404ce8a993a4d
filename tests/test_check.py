"""The public check: check_equivariance and `hf-equivariant check`."""

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, BPE_MIXED_PROMPTS, RACE_CLASSES, SEQ2SEQ_ARCHITECTURES, bpe_tokenizer
from test_image_groups import oracle_elements
from test_vision import CAPTION_WORDS, tiny_clip, tiny_vit
from test_word_action import GROUPS

import hf_equivariant_cli
from hf_equivariant import WordSwapGroup, check_equivariance, make_equivariant
from hf_equivariant.experiments.captions import caption_tokenizer


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


def copy_zero_only(model):
    """A deliberately broken wrapper: its scores are those of copy 0 of each image (the image itself for
    equitune), so it is the inner model, not invariant."""
    def symmetrised(rows, scores, pooled=False):
        return scores[rows.inverse[: len(rows.inverse) // model.num_copies]]
    return symmetrised


def oracle_image_errors(model, inputs, kinds):
    """max |y(g·x) - y(x)| per element, with the test's own element functions (numpy rotations and flips)."""
    def scores(x):
        output = model(**{**inputs, "pixel_values": x})
        return output.logits if "logits" in output else output.logits_per_image
    with torch.no_grad():
        reference = scores(inputs["pixel_values"])
        return [(scores(g(inputs["pixel_values"])) - reference).abs().max().item() for g in oracle_elements(kinds)]


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_check_image_models_for_invariance_under_every_element(kind, monkeypatch):
    kinds = ["rot90", "hflip"]
    base = tiny_vit() if kind == "vit" else tiny_clip()
    inputs = {"pixel_values": torch.randn(3, 3, 8, 8)}  # generic images, fixed by no element
    if kind == "clip":
        captions = [f"a photo of the digit {d}" for d in range(4)]
        inputs.update(caption_tokenizer(CAPTION_WORDS)(captions, return_tensors="pt", padding=True))
    model = make_equivariant(base, kinds, symmetrization="equitune")
    errors = check_equivariance(model, inputs)
    assert list(errors) == [f"rot90({r}) x hflip({f})" for r in range(4) for f in range(2)]
    assert max(errors.values()) <= 1e-4
    monkeypatch.setattr(model, "symmetrised", copy_zero_only(model))
    with pytest.raises(AssertionError, match=r"not equivariant: element rot90\(\d\) x hflip\(\d\) has error"):
        check_equivariance(model, inputs)
    broken = check_equivariance(model, inputs, atol=float("inf"))
    oracle = oracle_image_errors(model, inputs, kinds)  # the same elements, in the same order, moved by the test
    assert broken["rot90(0) x hflip(0)"] == 0 and min(list(broken.values())[1:]) > 1e-3
    assert np.allclose(list(broken.values()), oracle, atol=1e-4, rtol=0)


def test_check_refuses_a_plain_model_and_images_without_pixels():
    with pytest.raises(TypeError, match="checks an equivariant wrapper .* got a ViTForImageClassification"):
        check_equivariance(tiny_vit(), {"pixel_values": torch.randn(1, 3, 8, 8)})
    with pytest.raises(ValueError, match="needs the pixel_values the groups act on"):
        check_equivariance(make_equivariant(tiny_vit(), ["hflip"]), {"input_ids": torch.ones(1, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"takes pixel_values and, for an image-text model, .*; drop \['labels'\]"):
        check_equivariance(make_equivariant(tiny_vit(), ["hflip"]),
                           {"pixel_values": torch.randn(2, 3, 8, 8), "labels": torch.tensor([0, 1])})
