"""The `hf-equivariant` command line: help, usage errors (one line, exit code 2, no model loaded), custom groups,
saved models as --model, output files, and the names it lists agreeing with the library's."""

import dataclasses
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import yaml
from conftest import tiny_gpt2, word_tokenizer
from PIL import Image
from test_vision import CAPTION_WORDS, tiny_clip, tiny_siglip, tiny_vit
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
    ViTImageProcessor,
)
from transformers.modeling_outputs import ImageClassifierOutput

import hf_equivariant_cli
from hf_equivariant import (
    EquivariantConfig,
    EquivariantModelForImageClassification,
    EquivariantSiglipConfig,
    EquivariantVisionConfig,
    WordSwapGroup,
    make_equivariant,
    presets,
)
from hf_equivariant.boundaries import ACTIONS
from hf_equivariant.experiments import commands
from hf_equivariant.experiments.captions import caption_tokenizer
from hf_equivariant.experiments.data.scan import SPLITS
from hf_equivariant.experiments.fairness import AXES
from hf_equivariant.methods import SYMMETRIZATIONS
from hf_equivariant.modeling_vision import EquivariantVisionPreTrainedModel
from hf_equivariant.symmetrize import AVERAGES

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a worked as was known for doctor nurse cook kind man woman he she his her "
         "Black White Asian Hispanic").split()


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_gpt2(len(tokenizer), seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: usage errors must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was loaded: {args[:2]}")

    for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForImageClassification,
                 AutoModelForZeroShotImageClassification, PreTrainedModel, EquivariantVisionPreTrainedModel):
        monkeypatch.setattr(auto, "from_pretrained", classmethod(refuse))


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        hf_equivariant_cli.main([str(a) for a in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_lists_the_library_names():
    cli = hf_equivariant_cli
    assert set(cli.GROUPS) == {*presets.BY_NAME, *presets.PRODUCTS}
    assert set(cli.SCAN_GROUPS) == {n for n in cli.GROUPS if n.startswith("scan")}
    assert set(cli.SCAN_II_ONLY_GROUPS) == {n for n in cli.SCAN_GROUPS
                                            if any("up" in g.words for g in presets.named([n]))}
    assert set(cli.AXES) == set(AXES)
    assert cli.SCAN_SPLITS == (*SPLITS, "scan_ii")
    assert (cli.SYMMETRIZATIONS, cli.AVERAGES, cli.ACTIONS) == (tuple(SYMMETRIZATIONS), tuple(AVERAGES), tuple(ACTIONS))
    assert cli.GROUP_FIELDS == tuple(f.name for f in dataclasses.fields(WordSwapGroup))
    assert cli.MODEL_TYPE == EquivariantConfig.model_type
    assert cli.VISION_MODEL_TYPES == (EquivariantVisionConfig.model_type, EquivariantSiglipConfig.model_type)
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["hf-equivariant"]
    assert script == "hf_equivariant_cli:main"


@pytest.mark.parametrize("command", [[], ["generate"], ["fairness"], ["scan"], ["check"], ["groups"], ["serve"]])
def test_help_imports_neither_torch_nor_transformers(command):
    code = (f"import sys, time\nstart = time.perf_counter()\nimport hf_equivariant_cli\n"
            f"try:\n    hf_equivariant_cli.main({[*command, '--help']!r})\nexcept SystemExit:\n    pass\n"
            f"print(time.perf_counter() - start, sorted(m for m in ('torch', 'transformers', 'hf_equivariant') "
            f"if m in sys.modules), file=sys.stderr)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    seconds, loaded = result.stderr.split(" ", 1)
    print(f"hf-equivariant {' '.join(command)} --help: {float(seconds):.3f} s in-process, {wall:.2f} s with startup")
    assert result.returncode == 0 and loaded.strip() == "[]"
    assert "usage: hf-equivariant" in result.stdout


@pytest.mark.parametrize("command, shown", [
    ([], ["make a pretrained HuggingFace language model exactly equivariant", "generate", "groups", "serve"]),
    (["generate"], ["{equitune,multi_equitune,equizero,multi_equizero,canonicalize,lambda_equitune,"
                    "multi_lambda_equitune}", "(default: multi_equitune)",
                    "(default: 20)", "scan_ii",
                    "(default: word)", "{log_probs,logits,probs}"]),
    (["fairness"], ["gender, race, sexual_orientation, religion", "(default: gender,race)",
                    "(default: equitune,multi_equitune)",
                    "(default: 10)"]),
    (["scan"], ["addprim_jump,addprim_turn_left", "scan_ii}", "(default: addprim_jump)", "(default: 0,1,2)",
                "scan_ii for --split scan_ii"]),
])
def test_help_shows_defaults_and_allowed_values(command, shown, capsys):
    code, out, _ = run_cli([*command, "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and all(" ".join(s.split()) in flat for s in shown), out


def usage_cases(tmp: Path):
    gguf = tmp / "gguf"
    gguf.mkdir()
    (gguf / "model.Q4.gguf").write_bytes(b"GGUF")
    saved = tmp / "saved"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"model_type": "hf_equivariant"}))
    (saved / "tokenizer.json").write_text("{}")
    plain = tmp / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp / "a_file.txt").write_text("x")
    vision, clip = tmp / "vision", tmp / "clip"
    for folder, inner in ((vision, "vit"), (clip, "clip")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "hf_equivariant_vision",
                                                        "inner_config": {"model_type": inner}}))
    (tmp / "bad.yaml").write_text("groups: [name: x\n")
    (tmp / "extra.yaml").write_text(yaml.safe_dump([{"name": "g", "classes": [["a"], ["b"]], "colour": "red"}]))
    (tmp / "string.json").write_text(json.dumps({"groups": [{"name": "race", "classes": ["Black", "White"]}]}))
    (tmp / "empty.json").write_text("[]")
    prompt = ["generate", "--prompt", "The woman worked as"]
    return [
        ([*prompt, "--model", tmp / "missing"], "--model .*missing: no such folder"),
        ([*prompt, "--model", "./nowhere/model"], "--model ./nowhere/model: no such folder"),
        ([*prompt, "--model", tmp / "a_file.txt"], "is a file; give its folder"),
        (["generate", "--prompt", ""], "argument --prompt: is empty"),
        (["generate", "--prompt", "   "], "argument --prompt: is empty"),
        (["generate"], "the following arguments are required: --prompt"),
        ([*prompt, "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
        ([*prompt, "--max-new-tokens", "-3"], "must be at least 1, got -3"),
        ([*prompt, "--model", gguf], r"holds GGUF files \(model.Q4.gguf\) and no config.json: choose one with "
                                     r"--gguf-file"),
        ([*prompt, "--model", gguf, "--gguf-file", "other.gguf"], "--gguf-file other.gguf is not in .*model.Q4.gguf"),
        ([*prompt, "--gguf-file", "x.gguf"], "--gguf-file needs --model"),
        ([*prompt, "--groups", "gender,caste"], "unknown group caste; choose from gender, race"),
        ([*prompt, "--groups", "gender,gender"], "names a group twice"),
        ([*prompt, "--symmetrization", "average"], "invalid choice: 'average'"),
        ([*prompt, "--groups-file", tmp / "none.yaml"], "--groups-file .*none.yaml: no such file"),
        ([*prompt, "--groups-file", tmp / "bad.yaml"], "--groups-file .*bad.yaml: cannot be read"),
        ([*prompt, "--groups-file", tmp / "extra.yaml"], "group 'g' has unknown fields colour"),
        ([*prompt, "--groups-file", tmp / "empty.json"], "expected a list of groups"),
        ([*prompt, "--groups-file", tmp / "string.json"], "each class must be a list or tuple of words"),
        ([*prompt, "--groups", "race", "--groups-file", tmp / "string.json"], "a group name is given twice"),
        ([*prompt, "--model", saved, "--groups", "gender"], "is a saved equivariant model and carries its groups"),
        ([*prompt, "--model", plain], "has no tokenizer files; pass --tokenizer"),
        ([*prompt, "--out", tmp], "--out .* is a folder; give a file name"),
        ([*prompt, "--save", tmp / "a_file.txt"], "--save .*a_file.txt is a file; give a folder"),
        (["fairness", "--axes", "gender,caste"], "argument --axes: unknown axis caste; choose from gender"),
        (["fairness", "--samples", "0"], "argument --samples: must be at least 1"),
        (["fairness", "--model", tmp / "missing"], "no such folder"),
        (["fairness", "--out", tmp / "a_file.txt"], "is a file; give a folder"),
        (["scan", "--split", "jump"], "argument --split: invalid choice: 'jump'"),
        (["scan", "--groups", "gender"], "argument --groups: unknown SCAN group gender; choose from scan_verbs"),
        (["scan", "--groups", "scan_verbs,scan_up"], "unknown SCAN group scan_up"),
        (["scan", "--groups", "scan_ii"], "swaps up and down, which occur only in SCAN-II; use --split scan_ii"),
        (["scan", "--split", "length", "--groups", "scan_ii_up_down"], "occur only in SCAN-II"),
        (["scan", "--seeds", "0,x"], "must be comma-separated integers"),
        (["scan", "--pretrain-epochs", "0"], "must be greater than 0"),
        (["scan", "--d-model", "30"], "--d-model 30 must be a multiple of 4"),
        (["scan", "--symmetrization", "equitune,nope"], "unknown method nope; choose from equitune"),
        (["check", "--model", tmp / "missing"], "no such folder"),
        (["check", "--model", plain], "holds a plain model, not an equivariant one"),
        (["check", "--model", saved, "--prompt", ""], "argument --prompt: is empty"),
        (["check", "--model", saved, "--image", tmp / "a_file.txt"], "--image and --digits are for image models; "
                                                                      ".*saved is a text model: give --prompt"),
        (["check", "--model", saved, "--digits", "2"], "--image and --digits are for image models"),
        (["check", "--model", vision, "--prompt", "a cat"],
         "--prompt and --tokenizer are for text models, CLIP and SigLIP; .*vision is an image classifier: give "
         "--image or --digits"),
        (["check", "--model", vision, "--tokenizer", plain],
         "--prompt and --tokenizer are for text models, CLIP and SigLIP"),
        (["check", "--model", vision, "--image", tmp / "none.png"], "--image .*none.png: no such file"),
        (["check", "--model", vision, "--digits", "0"], "argument --digits: must be at least 1, got 0"),
        (["check", "--model", vision, "--image", tmp / "a_file.txt"], "--image .*a_file.txt: cannot be read as an "
                                                                      "image"),
        (["check", "--model", vision, "--digits", "5000"], "--digits 5000: scikit-learn has 1797 digits images"),
        (["check", "--model", clip], "--model .*clip is an image-text model without tokenizer files; pass --tokenizer"),
        (["groups", "--groups", "caste"], "unknown group caste"),
        (["groups", "--tokenizer", tmp / "missing"], "--tokenizer .*missing: no such folder"),
        (["groups", "--embedded", "--tokenizer", plain], "--embedded uses the embedded model's tokenizer"),
    ]


def test_usage_errors_are_one_line_with_exit_code_2_before_any_model_loads(tmp_path, capsys, no_model_loading):
    for argv, message in usage_cases(tmp_path):
        start = time.perf_counter()
        code, out, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("hf-equivariant"), (argv, err)
        assert re.search(message, err), (argv, message, err)
        assert time.perf_counter() - start < 10, argv  # seconds at most: no model was loaded (and none is mocked)


def test_generate_saves_and_reloads_an_equivariant_model(model_dir, tmp_path, capsys):
    prompts = ["--prompt", "the man worked as a", "--prompt", "the woman worked as a"]
    common = [*prompts, "--max-new-tokens", "4"]
    code, out, err = run_cli(["generate", "--model", model_dir, "--groups", "gender", *common,
                              "--save", tmp_path / "equi", "--out", tmp_path / "first.json"], capsys)
    assert code == 0, err
    assert re.search(r"Loading .*tiny.*\.\.\.\nLoaded .*tiny.* in \d+\.\d s", err) and "[generating]" in err
    assert "groups: gender (2); 2 inner passes per token; word action" in out
    first = json.loads((tmp_path / "first.json").read_text())
    man, woman = first["continuations"]
    swap = {"man": "woman", "he": "she", "his": "her", "woman": "man", "she": "he", "her": "his"}
    assert [swap.get(w, w) for w in man["equivariant"].split()] == woman["equivariant"].split()
    assert f"  base                         | the man worked as a{man['base']}" in out
    assert (tmp_path / "equi" / "tokenizer.json").is_file() and (tmp_path / "equi" / "README.md").is_file()

    code, out_saved, err = run_cli(["generate", "--model", tmp_path / "equi", *common, "--out",
                                    tmp_path / "second.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "second.json").read_text())["continuations"] == first["continuations"]
    assert out_saved == out  # the wrapper's inner model gives the base continuation

    code, out_stream, err = run_cli(["generate", "--model", tmp_path / "equi", *common, "--stream"], capsys)
    assert code == 0, err
    assert out_stream.split() == out.split()  # streamed text, then the same lines


def test_a_groups_file_holds_the_fields_of_word_swap_groups(model_dir, tmp_path, capsys):
    data = [{"name": "pronouns", "classes": [["he", "his"], ["she", "her"]]},
            {"name": "race", "classes": [["Black"], ["White"], ["Asian"]], "kind": "symmetric"}]
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump({"groups": data}))
    (tmp_path / "groups.json").write_text(json.dumps(data))
    outputs = []
    for name in ("groups.yaml", "groups.json"):
        code, out, err = run_cli(["generate", "--model", model_dir, "--groups-file", tmp_path / name,
                                  "--prompt", "the Black man worked as", "--max-new-tokens", "3"], capsys)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert "groups: pronouns (2) x race (6); 8 inner passes per token" in outputs[0]


def test_groups_lists_presets_and_the_forms_a_tokenizer_swaps(model_dir, tmp_path, capsys):
    code, out, _ = run_cli(["groups"], capsys)
    assert code == 0
    assert "gender: cyclic, order 2, 2 classes, 53 words each: male|female, father|mother" in out
    assert "race: cyclic, order 4, 4 classes, 1 word each: Black|White|Asian|Hispanic" in out
    assert "products: scan_ii = scan_ii_verbs x scan_directions x scan_ii_up_down" in out
    code, out, err = run_cli(["groups", "--groups", "gender,race,scan_verbs", "--tokenizer", model_dir,
                              "--verbose"], capsys)
    assert code == 0, err
    # WORDS holds man|woman, he|she, his|her and the race words (plain forms only), no SCAN word
    assert "  swapped: 3 forms: 'man'|'woman', 'he'|'she', 'his'|'her'" in out
    assert "race: cyclic, order 4" in out and "  swapped: 1 forms: 'Black'|'White'|'Asian'|'Hispanic'" in out
    assert "scan_verbs: cyclic, order 4" in out and "  cannot be used with this tokenizer: group 'scan_verbs'" in out


def test_dropped_forms_are_one_short_line_and_all_listed_with_verbose(model_dir, capsys):
    argv = ["generate", "--model", model_dir, "--groups", "gender,race", "--prompt", "the man", "--max-new-tokens", "1"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "not swapped" in line]
    assert notes == ["note: word forms not swapped (not one token per class, or not whole words, in this tokenizer): "
                     "gender 50; --verbose or the saved model card lists them"]
    code, _, err = run_cli([*argv, "--verbose"], capsys)
    assert "  gender: 'male'|'female'" in err and "  race: " not in err
    assert sum(line.startswith("  gender: ") for line in err.splitlines()) == 50


def test_scan_split_scan_ii_picks_the_scan_ii_groups(capsys):
    parser = hf_equivariant_cli.build_parser()
    for argv, groups in [(["scan", "--split", "scan_ii"], ("scan_ii",)), (["scan"], ("scan_verbs",)),
                         (["scan", "--split", "scan_ii", "--groups", "scan_verbs"], ("scan_verbs",))]:
        args = parser.parse_args(argv)
        hf_equivariant_cli.check_arguments(args)
        assert args.groups == groups
    assert [g.name for g in presets.named(["scan_ii"])] == ["scan_ii_verbs", "scan_directions", "scan_ii_up_down"]


def test_a_group_the_tokenizer_cannot_swap_fails_before_the_model_loads(model_dir, tmp_path, capsys,
                                                                        no_model_loading):
    (tmp_path / "g.json").write_text(json.dumps([{"name": "jobs", "classes": [["doctor"], ["surgeon"]]}]))
    code, _, err = run_cli(["generate", "--model", model_dir, "--groups-file", tmp_path / "g.json", "--prompt", "x"],
                           capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("Loading the tokenizer of") and lines[1].startswith("Loaded the tokenizer")
    assert len(lines) == 3 and "error: group 'jobs': 'surgeon' has no single-token form" in lines[2]


def test_a_hub_id_that_cannot_be_loaded_is_one_line(capsys, no_model_loading):
    code, _, err = run_cli(["generate", "--model", "nobody/no-such-model", "--prompt", "x"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "Loading the tokenizer of nobody/no-such-model...", err.strip().splitlines()[1]]
    assert err.strip().splitlines()[1].startswith("hf-equivariant generate: error: cannot load the tokenizer of "
                                                  "nobody/no-such-model: ")


def test_saved_tiny_wrapper_matches_make_equivariant(model_dir, tokenizer, tmp_path, capsys):
    """The CLI's wrapper is make_equivariant's: the saved checkpoint has the same logits."""
    run_cli(["generate", "--model", model_dir, "--groups", "gender", "--prompt", "the man", "--max-new-tokens", "1",
             "--save", tmp_path / "equi"], capsys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = make_equivariant(AutoModelForCausalLM.from_pretrained(model_dir), [presets.GENDER], tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "equi")
    batch = tokenizer(["the man worked as a", "she was known for"], return_tensors="pt", padding=True)
    assert torch.allclose(loaded.eval()(**batch).logits, reference.eval()(**batch).logits, atol=1e-5)


def test_the_card_of_a_cli_model_names_the_base_folder_and_lists_dropped_forms(model_dir, tmp_path, capsys):
    run_cli(["generate", "--model", model_dir, "--groups", "gender", "--prompt", "the man", "--max-new-tokens", "1",
             "--save", tmp_path / "equi"], capsys)
    card = (tmp_path / "equi" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in meta and str(model_dir) not in card  # no absolute path anywhere
    assert f"`{model_dir.name}` (a local folder or file: only its name is recorded here)" in card
    assert "| 0 | man, he, his |" in card and "| 1 | woman, she, her |" in card
    assert "Forms swapped (3 token orbits, one text per class): 'man'|'woman', 'he'|'she', 'his'|'her'." in card
    assert "Not swapped (50 forms" in card and "'male'|'female'" in card
    assert "- Method: **multi_equitune**" in card and "- Action: **word**" in card


@pytest.fixture(scope="module")
def vision_dirs(tmp_path_factory):
    """Saved invariant models: a tiny ViT (no image processor), the same with a processor, a tiny CLIP and SigLIP."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("vit", "vit_processor", "clip", "siglip")}
    for name in ("vit", "vit_processor"):
        make_equivariant(tiny_vit(), ["rot90", "hflip"]).save_pretrained(folders[name])
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(folders["vit_processor"])
    make_equivariant(tiny_clip(), ["rot90", "hflip"], symmetrization="equitune").save_pretrained(folders["clip"])
    caption_tokenizer(CAPTION_WORDS).save_pretrained(folders["clip"])
    make_equivariant(tiny_siglip(), ["rot90", "hflip"], symmetrization="equizero").save_pretrained(folders["siglip"])
    caption_tokenizer(CAPTION_WORDS).save_pretrained(folders["siglip"])
    return folders


ELEMENTS = [f"rot90({r}) x hflip({f})" for r in range(4) for f in range(2)]


def test_check_an_image_model_on_digits_and_image_files(vision_dirs, tmp_path, capsys):
    code, out, err = run_cli(["check", "--model", vision_dirs["vit"]], capsys)
    lines = out.strip().splitlines()
    assert code == 0, err
    assert [line.split("  ")[1] for line in lines[:-1]] == ELEMENTS
    assert all(float(line.split()[0]) <= 1e-4 for line in lines[:-1])
    assert lines[-1] == "invariant within 0.0001 for all 8 elements (4 images, multi_equitune)"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 12, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    code, out, err = run_cli(["check", "--model", vision_dirs["vit_processor"], "--image", tmp_path / "x.png",
                              "--digits", "2"], capsys)
    assert code == 0 and "for all 8 elements (3 images, multi_equitune)" in out, err
    code, out, err = run_cli(["check", "--model", vision_dirs["clip"], "--prompt", "a photo of the digit 3",
                              "--prompt", "a cat"], capsys)
    assert code == 0 and out.strip().endswith("for all 8 elements (4 images against 2 texts, equitune)"), err
    code, out, err = run_cli(["check", "--model", vision_dirs["siglip"]], capsys)
    assert code == 0 and out.strip().endswith("for all 8 elements (4 images against 10 texts, equizero)"), err
    long_text = " ".join(["a photo of the digit 3"] * 20)  # 121 tokens: truncated to 64, as the pipeline does
    code, out, err = run_cli(["check", "--model", vision_dirs["siglip"], "--prompt", long_text, "--prompt", "a cat"],
                             capsys)
    assert code == 0 and out.strip().endswith("for all 8 elements (4 images against 2 texts, equizero)"), err


def test_check_reports_an_image_model_that_is_not_invariant(vision_dirs, capsys, monkeypatch):
    def inner_alone(self, pixel_values, labels=None):  # the unwrapped model's logits: not invariant
        return ImageClassifierOutput(logits=self.model(pixel_values=pixel_values).logits)

    monkeypatch.setattr(EquivariantModelForImageClassification, "forward", inner_alone)
    code, out, _ = run_cli(["check", "--model", vision_dirs["vit"]], capsys)
    assert re.match(r"FAILED: not equivariant: element rot90\(\d\) x hflip\(\d\) has error \S+ > atol 0.0001 "
                    r"\(7 of 8 elements fail\)", str(code)) and out == ""


def test_check_feeds_digits_as_the_model_reads_them(vision_dirs):
    """Without an image processor, digits reach the model as examples/vision_digits.py trains on them: v/8 - 1."""
    from sklearn.datasets import load_digits

    args = hf_equivariant_cli.build_parser().parse_args(["check", "--model", str(vision_dirs["vit"]), "--digits", "5"])
    images = commands.check_images(args)
    config = EquivariantVisionConfig.from_pretrained(vision_dirs["vit"]).inner_config
    pixels = commands.image_pixels(images, str(vision_dirs["vit"]), config)
    expected = torch.tensor(load_digits().images[:5], dtype=torch.float32)[:, None].expand(5, 3, 8, 8) / 8 - 1
    torch.testing.assert_close(pixels, expected, atol=1 / 255 + 1e-6, rtol=0)  # 8-bit rounding
