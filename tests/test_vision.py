"""Vision wrappers on tiny random ViT, ResNet, ConvNeXt, CLIP and SigLIP models: invariance of every method for
every element, counted inner passes, save/load, Auto classes, model card (saved and pushed to a mocked Hub),
pipelines and a Trainer step."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_image_groups import METHODS, images, oracle_elements
from test_save_load import USER_CARD, front_matter
from transformers import (
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    CLIPConfig,
    CLIPModel,
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SiglipConfig,
    SiglipModel,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    pipeline,
)

from hf_equivariant import (
    EquivariantCLIPModel,
    EquivariantModelForImageClassification,
    EquivariantSiglipConfig,
    EquivariantSiglipModel,
    EquivariantVisionConfig,
    make_equivariant,
)
from hf_equivariant.experiments.captions import SPECIAL_TOKENS, caption_tokenizer
from hf_equivariant.methods import MULTI_GROUP_PAPER

LABELS = {i: f"class {i}" for i in range(5)}
GROUPS = [["rot90", "hflip"], ["hflip", "vflip"], ["rot90"]]


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=2, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, id2label=LABELS)).eval()


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=LABELS)).eval()


def tiny_convnext(seed=0):
    torch.manual_seed(seed)
    return ConvNextForImageClassification(ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2, id2label=LABELS)).eval()


CLASSIFIERS = {"vit": tiny_vit, "resnet": tiny_resnet, "convnext": tiny_convnext}
CAPTION_WORDS = "this is a photo of the digit cat dog 0 1 2 3 4 5 6 7 8 9 .".split()


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    text = dict(vocab_size=len(SPECIAL_TOKENS) + len(CAPTION_WORDS), hidden_size=16, num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(image_size=8, patch_size=2, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()


def tiny_siglip(seed=0):
    """A tiny SigLIP with a logit scale and bias away from their zero initialisation (the bias must count)."""
    torch.manual_seed(seed)
    text = dict(vocab_size=len(SPECIAL_TOKENS) + len(CAPTION_WORDS), hidden_size=16, num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=64, projection_size=16, pad_token_id=0, bos_token_id=2,
                eos_token_id=3)
    vision = dict(image_size=8, patch_size=2, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.5)
    return model


# The image-text families: the inner model, the wrapper class, and how a row of logits_per_image becomes the
# probabilities the zero-shot pipeline reports (a softmax over the texts for CLIP, a sigmoid per pair for SigLIP).
IMAGE_TEXT = {
    "clip": (tiny_clip, EquivariantCLIPModel, lambda logits: logits.softmax(-1)),
    "siglip": (tiny_siglip, EquivariantSiglipModel, torch.sigmoid),
}


def captions(family, digits=range(4)):
    """Tokenised captions, padded as the zero-shot pipeline pads them (SigLIP: to 64 tokens)."""
    padding = dict(padding="max_length", max_length=64) if family == "siglip" else dict(padding=True)
    captions = [f"a photo of the digit {d}" for d in digits]
    return caption_tokenizer(CAPTION_WORDS)(captions, return_tensors="pt", **padding)


def pixels(seed=0):
    """Generic images and images fixed by some element, 3 channels, 8x8."""
    return images(seed, size=8).repeat(1, 2, 1, 1)[:, :3]


class RowCounter:
    """Counts the image rows the inner model computes (a forward pre-hook on it)."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        self.rows += (args[0] if args else kwargs["pixel_values"]).shape[0]


@pytest.mark.parametrize("architecture", sorted(CLASSIFIERS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kinds", GROUPS, ids="x".join)
def test_classifier_logits_are_invariant_to_every_element(architecture, method, kinds):
    base = CLASSIFIERS[architecture]()
    model = make_equivariant(base, kinds, symmetrization=method).eval()
    assert isinstance(model, EquivariantModelForImageClassification)
    x = pixels()
    with torch.no_grad():
        y = model(x).logits
        for element in oracle_elements(kinds):
            torch.testing.assert_close(model(element(x)).logits, y, atol=1e-4, rtol=0)
        moved = oracle_elements(kinds)[1](x)
        assert (base(moved).logits - base(x).logits).abs().max() > 1e-3  # negative control


def test_inner_passes_counted():
    base = tiny_vit()
    x = torch.randn(3, 3, 8, 8)  # generic images
    counts = {}
    for method in METHODS:
        for deduplicate in (False, True):
            model = make_equivariant(base, ["rot90", "hflip"], symmetrization=method)
            model.config.deduplicate = deduplicate
            counter = RowCounter(model.model)
            with torch.no_grad():
                model(x)
            counts[method, deduplicate] = counter.rows / 3
    expected = {"equitune": (8, 8), "equizero": (8, 8), "multi_equitune": (6, 5), "multi_equizero": (6, 5),
                "canonicalize": (1, 1)}  # the multi design's canonical image is in both branches
    assert {m: (counts[m, False], counts[m, True]) for m in METHODS} == expected
    assert [make_equivariant(base, ["rot90", "hflip"], symmetrization=m).num_copies for m in METHODS] == [8, 6, 8, 6, 1]
    assert make_equivariant(base, ["rot90", "hflip"]).num_copies == 6
    assert make_equivariant(base, ["rot90", "hflip"], symmetrization="equitune").num_copies == 8


def test_save_load_auto_classes_and_card(tmp_path):
    method = "multi_equizero"
    model = make_equivariant(tiny_vit(), ["rot90", "hflip"], symmetrization=method).eval()
    x = pixels()
    with torch.no_grad():
        y = model(x).logits
    model.save_pretrained(tmp_path / "eq")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "eq")
    assert isinstance(loaded, EquivariantModelForImageClassification)
    assert loaded.config.symmetrization == method and [f.kind for f in loaded.config.factors] == ["rot90", "hflip"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, y, atol=0, rtol=0)
    card = (tmp_path / "eq" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and f"**{method}**" in card and "**6**" in card
    assert "equitune" in card and "lambda_equitune" not in card  # the card compares only methods images can run
    other = EquivariantModelForImageClassification.from_pretrained(tmp_path / "eq", symmetrization="equitune")
    assert other.config.symmetrization == "equitune" and other.num_copies == 8
    # a plain checkpoint made invariant on load
    tiny_vit().save_pretrained(tmp_path / "plain")
    from_base = EquivariantModelForImageClassification.from_pretrained(tmp_path / "plain", groups=["rot90", "hflip"],
                                                                       symmetrization=method).eval()
    with torch.no_grad():
        torch.testing.assert_close(from_base(x).logits, y, atol=0, rtol=0)
    with pytest.raises(ValueError, match="plain vit checkpoint: pass groups="):
        EquivariantModelForImageClassification.from_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="already invariant"):
        EquivariantModelForImageClassification.from_pretrained(tmp_path / "eq", groups=["hflip"])
    with pytest.raises(ValueError, match="already invariant"):
        make_equivariant(model, ["hflip"])
    with pytest.raises(ValueError, match="EquivariantCLIPModel wraps CLIP models, got a vit model"):
        EquivariantCLIPModel.from_base_model(tiny_vit(), ["hflip"])
    with pytest.raises(ValueError, match="the config has no groups"):
        EquivariantModelForImageClassification(EquivariantVisionConfig(inner_config=tiny_vit().config))
    with pytest.raises(ValueError, match="unknown symmetrization 'canon', choose one of .*'multi_equitune'"):
        make_equivariant(tiny_vit(), ["hflip"], symmetrization="canon")


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


PIL_ELEMENTS = [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
                Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
                Image.Transpose.TRANSVERSE]  # the dihedral group D4 on PIL images


def processor():
    return ViTImageProcessor(do_resize=False, do_rescale=True, do_normalize=True, image_mean=[0.5] * 3,
                             image_std=[0.5] * 3)


def test_image_classification_pipeline_is_invariant():
    model = make_equivariant(tiny_vit(), ["rot90", "hflip"]).eval()
    classify = pipeline("image-classification", model=model, image_processor=processor(), top_k=5)
    base = pipeline("image-classification", model=model.model, image_processor=processor(), top_k=5)
    image = to_pil(torch.rand(3, 8, 8))
    reference = {r["label"]: r["score"] for r in classify(image)}
    assert set(reference) == set(LABELS.values())
    plain = []
    for transpose in PIL_ELEMENTS:
        moved = image if transpose is None else image.transpose(transpose)
        scores = {r["label"]: r["score"] for r in classify(moved)}
        assert all(abs(scores[label] - reference[label]) <= 1e-4 for label in reference)
        plain.append(base(moved)[0]["score"])
    assert max(plain) - min(plain) > 1e-3  # negative control


def test_trainer_step_then_still_invariant(tmp_path):
    from datasets import Dataset

    model = make_equivariant(tiny_resnet(), ["rot90", "hflip"])
    torch.manual_seed(0)
    data = Dataset.from_dict({"pixel_values": torch.randn(8, 3, 8, 8).tolist(), "labels": list(range(5)) + [0, 1, 2]})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, learning_rate=1e-2, save_strategy="no")
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert np.isfinite(result.training_loss)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    model.eval()
    x = pixels()
    with torch.no_grad():
        y = model(x).logits
        for element in oracle_elements(["rot90", "hflip"]):
            torch.testing.assert_close(model(element(x)).logits, y, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", IMAGE_TEXT)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("average", ["probs", "log_probs", "logits"])
def test_image_text_image_side_is_invariant(family, method, average):
    make_base, wrapper, _ = IMAGE_TEXT[family]
    base = make_base()
    model = make_equivariant(base, ["rot90", "hflip"], symmetrization=method, average=average).eval()
    assert type(model) is wrapper
    texts = captions(family)
    x = pixels()
    with torch.no_grad():
        reference = model(**texts, pixel_values=x)
        features = model.get_image_features(x).pooler_output
        assert reference.logits_per_image.shape == (x.shape[0], 4)
        torch.testing.assert_close(reference.logits_per_text, reference.logits_per_image.t())
        for element in oracle_elements(["rot90", "hflip"]):
            out = model(**texts, pixel_values=element(x))
            torch.testing.assert_close(out.logits_per_image, reference.logits_per_image, atol=1e-4, rtol=0)
            torch.testing.assert_close(out.image_embeds, reference.image_embeds, atol=1e-4, rtol=0)
            torch.testing.assert_close(model.get_image_features(element(x)).pooler_output, features, atol=1e-4, rtol=0)
        moved = oracle_elements(["rot90", "hflip"])[1](x)
        assert (base(**texts, pixel_values=moved).logits_per_image
                - base(**texts, pixel_values=x).logits_per_image).abs().max() > 1e-3  # negative control
        assert (base.get_image_features(moved).pooler_output
                - base.get_image_features(x).pooler_output).abs().max() > 1e-3
        torch.testing.assert_close(model.get_text_features(**texts).pooler_output,
                                   base.get_text_features(**texts).pooler_output)


@pytest.mark.parametrize("family", IMAGE_TEXT)
@pytest.mark.parametrize("average", ["probs", "log_probs", "logits"])
def test_image_text_logits_are_the_mean_over_the_group(family, average):
    """equitune against an oracle from the inner model on the 8 moved images: with average="probs" the
    probabilities the pipeline reads (CLIP: softmax over the texts, SigLIP: sigmoid per pair) are the mean of
    the inner model's; with "logits" the logits are; with "log_probs" CLIP's log-softmax over the texts is, and
    SigLIP's logits are (the logit of the normalised geometric mean of the pairs' Bernoulli distributions)."""
    make_base, _, probabilities = IMAGE_TEXT[family]
    base = make_base()
    model = make_equivariant(base, ["rot90", "hflip"], symmetrization="equitune", average=average).eval()
    texts = captions(family)
    x = pixels()
    with torch.no_grad():
        inner = torch.stack([base(**texts, pixel_values=g(x)).logits_per_image for g in oracle_elements(["rot90",
                                                                                                         "hflip"])])
        logits = model(**texts, pixel_values=x).logits_per_image
    if average == "probs":
        torch.testing.assert_close(probabilities(logits), probabilities(inner.double()).mean(0).float(),
                                   atol=1e-6, rtol=0)
    elif average == "log_probs" and family == "clip":
        torch.testing.assert_close(logits, inner.log_softmax(-1).mean(0), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(logits, inner.mean(0), atol=1e-5, rtol=0)
    assert (probabilities(inner[1]) - probabilities(inner[0])).abs().max() > 1e-3  # the copies differ


@pytest.mark.parametrize("family", IMAGE_TEXT)
def test_image_text_inner_passes_counted(family):
    make_base, _, _ = IMAGE_TEXT[family]
    base = make_base()
    texts = captions(family)
    x = torch.randn(3, 3, 8, 8)  # generic images
    counts = {}
    for method in METHODS:
        for deduplicate in (False, True):
            model = make_equivariant(base, ["rot90", "hflip"], symmetrization=method, deduplicate=deduplicate)
            counter = RowCounter(model.model.vision_model)
            with torch.no_grad():
                model(**texts, pixel_values=x)
                model.get_image_features(x)
            counts[method, deduplicate] = counter.rows / 3 / 2
    expected = {"equitune": (8, 8), "equizero": (8, 8), "multi_equitune": (6, 5), "multi_equizero": (6, 5),
                "canonicalize": (1, 1)}
    assert {m: (counts[m, False], counts[m, True]) for m in METHODS} == expected


@pytest.mark.parametrize("family", IMAGE_TEXT)
@pytest.mark.parametrize("average", ["probs", "logits"])
def test_image_text_loss_is_the_inner_loss_on_images_every_element_fixes(family, average):
    """On images that every element fixes (constant ones) every copy is the image itself: the wrapper's loss
    (CLIP's contrastive, SigLIP's sigmoid loss) equals the inner model's; SigLIP also with average="probs",
    since logit(sigmoid(z)) = z."""
    make_base, _, _ = IMAGE_TEXT[family]
    base = make_base()
    model = make_equivariant(base, ["rot90", "hflip"], average=average)
    texts = captions(family)
    fixed = torch.linspace(-1, 1, 4)[:, None, None, None].expand(4, 3, 8, 8)
    out = model(**texts, pixel_values=fixed, return_loss=True)
    inner = base(**texts, pixel_values=fixed, return_loss=True)
    if family == "clip" and average == "probs":  # log mean softmax over texts shifts each image's row
        assert (out.loss - inner.loss).abs() > 1e-3
    else:
        torch.testing.assert_close(out.loss, inner.loss, atol=1e-5, rtol=0)
    out.loss.backward()
    assert next(base.vision_model.parameters()).grad.abs().sum() > 0


@pytest.mark.parametrize("family", IMAGE_TEXT)
def test_image_text_save_load_and_zero_shot_pipeline(family, tmp_path):
    make_base, wrapper, probabilities = IMAGE_TEXT[family]
    base = make_base()
    model = make_equivariant(base, ["rot90", "hflip"], symmetrization="multi_equizero").eval()
    model.save_pretrained(tmp_path / "eq")
    loaded = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path / "eq")
    assert type(loaded) is wrapper and type(loaded.config) is wrapper.config_class
    assert "pipeline_tag: zero-shot-image-classification" in (tmp_path / "eq" / "README.md").read_text()
    texts = captions(family)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**texts, pixel_values=pixels()).logits_per_image,
                                   model(**texts, pixel_values=pixels()).logits_per_image, atol=0, rtol=0)
    # a plain checkpoint made invariant on load
    base.save_pretrained(tmp_path / "plain")
    from_base = wrapper.from_pretrained(tmp_path / "plain", groups=["rot90", "hflip"], symmetrization="multi_equizero")
    with torch.no_grad():
        torch.testing.assert_close(from_base.eval()(**texts, pixel_values=pixels()).logits_per_image,
                                   model(**texts, pixel_values=pixels()).logits_per_image, atol=0, rtol=0)

    labels = [str(d) for d in range(4)]
    template = "a photo of the digit {}"
    classify = pipeline("zero-shot-image-classification", model=loaded, tokenizer=caption_tokenizer(CAPTION_WORDS),
                        image_processor=processor())
    plain = pipeline("zero-shot-image-classification", model=base, tokenizer=caption_tokenizer(CAPTION_WORDS),
                     image_processor=processor())
    image = to_pil(torch.rand(3, 8, 8))

    def scores(classifier, picture):
        return {r["label"]: r["score"] for r in classifier(picture, candidate_labels=labels,
                                                           hypothesis_template=template)}

    reference = scores(classify, image)
    with torch.no_grad():  # the pipeline reads the wrapper's logits as the inner model's (SigLIP: sigmoid per label)
        logits = loaded(**captions(family), pixel_values=processor()(image, return_tensors="pt").pixel_values)
    expected = probabilities(logits.logits_per_image)[0]
    assert all(abs(reference[label] - expected[i].item()) <= 1e-6 for i, label in enumerate(labels))
    base_scores = []
    for transpose in PIL_ELEMENTS[1:]:
        moved = scores(classify, image.transpose(transpose))
        assert all(abs(moved[label] - reference[label]) <= 1e-4 for label in labels)
        base_scores.append(scores(plain, image.transpose(transpose))["0"])
    assert max(base_scores) - min(base_scores) > 1e-3  # negative control


def test_image_text_wrappers_refuse_other_models(tmp_path):
    from transformers import Siglip2Config, Siglip2Model

    with pytest.raises(ValueError, match="EquivariantCLIPModel wraps CLIP models, got a siglip model: wrap it with "
                                         "EquivariantSiglipModel"):
        EquivariantCLIPModel.from_base_model(tiny_siglip(), ["hflip"])
    with pytest.raises(ValueError, match="EquivariantSiglipModel wraps SigLIP models, got a clip model"):
        EquivariantSiglipModel.from_base_model(tiny_clip(), ["hflip"])
    tiny_siglip().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="wraps CLIP models, got a siglip model"):
        EquivariantCLIPModel.from_pretrained(tmp_path, groups=["hflip"])
    siglip2 = Siglip2Model(Siglip2Config(
        text_config=dict(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, projection_size=16),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           num_patches=16, patch_size=2)))
    with pytest.raises(ValueError, match="got a siglip2 model: SigLIP 2 takes images as sequences of patches"):
        make_equivariant(siglip2, ["hflip"])
    assert EquivariantSiglipConfig.model_type == "hf_equivariant_siglip"  # the pipeline's sigmoid reads "siglip"


def test_real_clip_example_runs_on_local_folders(tmp_path):
    """examples/vision_clip_zero_shot.py (the real-CLIP command) on a saved tiny CLIP and an image folder."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import vision_clip_zero_shot

    tiny_clip().save_pretrained(tmp_path / "clip")
    caption_tokenizer(CAPTION_WORDS).save_pretrained(tmp_path / "clip")
    processor().save_pretrained(tmp_path / "clip")
    torch.manual_seed(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            to_pil(torch.rand(3, 8, 8)).save(tmp_path / "images" / label / f"{i}.png")
    table = vision_clip_zero_shot.main(["--model", str(tmp_path / "clip"), "--dataset", "imagefolder", "--data-dir",
                                        str(tmp_path / "images"), "--split", "train", "--samples", "0"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()[4:]}
    assert set(rows) == {"plain", *METHODS}
    assert rows["equitune"][1] == "8.00" and rows["plain"][1] == "1.00"
    for method in METHODS:
        assert rows[method][2] == rows[method][3]  # upright and moved accuracy agree: invariant


def test_digits_experiment_smoke_run(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import vision_digits

    out = tmp_path / "vision.md"
    vision_digits.main(["--seeds", "0", "1", "--epochs", "1", "--clip-epochs", "1", "--fine-tune-epochs", "1",
                        "--train-samples", "60", "--test-samples", "24", "--out", str(out)])
    text = out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and "±" in line}
    assert {"plain", *METHODS} <= set(rows)
    for section in text.split("## ")[1:3]:  # the classifier and CLIP tables: invariant methods agree upright/moved
        for line in section.splitlines():
            cells = line.split(" | ")
            if len(cells) == 6 and cells[0].strip("| ") in METHODS:
                assert cells[3] == cells[4], line
    assert "| equitune | 8 | 8.00 |" in text and "| multi_equitune | 6 | 5.00 |" in text
    assert (tmp_path / "raw" / "vision.json").exists()


def test_methods_reading_hidden_states_are_refused_for_images():
    from hf_equivariant.methods import (
        SYMMETRIZATIONS,
        CopyWeights,
        SymmetrizationMethod,
        full_product_plan,
        register_symmetrization,
    )

    class HiddenStateWeights(CopyWeights):
        uses_hidden_states = True

        def __init__(self, config=None):
            super().__init__()

    register_symmetrization(SymmetrizationMethod("test_hidden", full_product_plan, "-", "test", HiddenStateWeights))
    try:
        with pytest.raises(ValueError, match="'test_hidden' weighs copies by the inner model's hidden states") as error:
            make_equivariant(tiny_vit(), ["hflip"], symmetrization="test_hidden")
        assert "'equizero'" in str(error.value) and "lambda" not in str(error.value)
    finally:
        del SYMMETRIZATIONS["test_hidden"]


def test_push_to_hub_uploads_the_vision_model_and_its_card(mocked_hub):
    model = make_equivariant(tiny_vit(), ["rot90", "hflip"]).eval()
    model.config.base_model = "google/vit-base-patch16-224"
    model.push_to_hub("user/inv-vit", tags=["digits"])
    assert {"README.md", "config.json", "model.safetensors"} <= set(os.listdir(mocked_hub))
    loaded = AutoModelForImageClassification.from_pretrained(mocked_hub)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels()).logits, model(pixels()).logits, atol=0, rtol=0)
    meta = front_matter(mocked_hub / "README.md")
    assert meta["library_name"] == "transformers" and meta["base_model"] == "google/vit-base-patch16-224"
    assert meta["pipeline_tag"] == "image-classification"
    assert {"hf-equivariant", "invariance", "multi_equitune", "group:rot90", "group:hflip", "digits"} <= set(
        meta["tags"])
    body = (mocked_hub / "README.md").read_text()
    assert "| `rot90` | rot90 | 4 |" in body and "| `hflip` | hflip | 2 |" in body and "(order 8)" in body
    assert ("Inner forward passes per image: **6** (per method: equitune 8, multi_equitune 6, equizero 8, "
            "multi_equizero 6, canonicalize 1") in body
    assert MULTI_GROUP_PAPER in body  # the method's citation
    assert 'AutoModelForImageClassification.from_pretrained("user/inv-vit")' in body


@pytest.mark.parametrize("family", IMAGE_TEXT)
def test_push_to_hub_keeps_the_vision_card_the_user_has_on_the_hub(family, mocked_hub):
    make_base, _, _ = IMAGE_TEXT[family]
    (mocked_hub / "README.md").write_text(USER_CARD)
    model = make_equivariant(make_base(), ["rot90", "hflip"], symmetrization="equitune")
    model.push_to_hub("user/inv")
    make_equivariant(model.model, ["vflip"]).push_to_hub("user/inv")  # a second push updates the section it added
    text = (mocked_hub / "README.md").read_text()
    assert text.count("My own words.") == 1 and text.count("## Groups") == 1 and "hf-equivariant:groups" in text
    assert "| `vflip` | vflip | 2 |" in text and "`rot90`" not in text
    assert "Inner forward passes per image: **2**" in text
    assert ("of each image-text pair's own sigmoid probability" in text) == (family == "siglip")
    meta = front_matter(mocked_hub / "README.md")
    assert meta["license"] == "mit" and meta["base_model"] == "someone/base"
    assert meta["pipeline_tag"] == "zero-shot-image-classification"
    assert {"mine", "hf-equivariant", "group:rot90", "group:vflip", "equitune"} <= set(meta["tags"])


def test_save_pretrained_merges_the_image_groups_into_a_card_the_user_wrote(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(USER_CARD)
    model = make_equivariant(tiny_resnet(), ["rot90", "hflip"])
    model.save_pretrained(tmp_path)
    make_equivariant(model.model, ["hflip"]).save_pretrained(tmp_path)
    text = readme.read_text()
    assert text.count("My own words.") == 1 and text.count("## Groups") == 1 and "`rot90`" not in text
    assert "| `hflip` | hflip | 2 |" in text and "Inner forward passes per image: **2**" in text
    meta = front_matter(readme)
    assert meta["license"] == "mit" and meta["pipeline_tag"] == "image-classification"
    assert {"mine", "group:rot90", "group:hflip"} <= set(meta["tags"])
    # a card written by the library is rewritten whole, and names a local base model by its folder only
    tiny_resnet().save_pretrained(tmp_path / "some" / "local-resnet")
    local = EquivariantModelForImageClassification.from_pretrained(tmp_path / "some" / "local-resnet",
                                                                   groups=["rot90"])
    local.save_pretrained(tmp_path / "ours")
    card = (tmp_path / "ours" / "README.md").read_text()
    assert card == str(local.model_card()) and "`local-resnet` (a local folder" in card
    assert str(tmp_path) not in card and "base_model" not in front_matter(tmp_path / "ours" / "README.md")
