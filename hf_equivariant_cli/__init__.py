"""hf-equivariant: make a pretrained HuggingFace language model exactly equivariant to word swaps.

Swapping demographic words in a prompt ("The woman worked as" -> "The man worked as") then swaps them in the
model's continuation and changes nothing else, by construction. The commands compare such a model with the
base model (generate), measure fairness (fairness), run the SCAN experiment (scan), check a saved model
(check), show the word-swap groups (groups) and serve a model behind an OpenAI-compatible API (serve).
Without --model they use the embedded SmolLM2-135M-Instruct.

This package only parses and checks the arguments, with the standard library: `--help` answers at once, and a
wrong argument ends with one line on stderr and exit code 2 before any model is loaded. The commands are in
`hf_equivariant.experiments.commands`, imported when one runs (importing the library loads torch and
transformers, which takes seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

# The library's names, written out so that help needs no import of it (tests/test_cli.py checks them).
DEMOGRAPHIC_GROUPS = ("gender", "race", "sexual_orientation", "religion")
SCAN_GROUPS = ("scan_verbs", "scan_directions", "scan_ii_verbs", "scan_ii_up_down", "scan_ii")
GROUPS = DEMOGRAPHIC_GROUPS + SCAN_GROUPS
SCAN_II_ONLY_GROUPS = ("scan_ii_up_down", "scan_ii")  # up and down occur in SCAN-II only
AXES = ("gender", "race", "sexual_orientation", "religion")
SCAN_SPLITS = ("simple", "length", "addprim_jump", "addprim_turn_left", "template_around_right",
               "template_jump_around_right", "template_opposite_right", "template_right", "scan_ii")
SYMMETRIZATIONS = ("equitune", "multi_equitune", "equizero", "multi_equizero", "canonicalize", "lambda_equitune",
                   "multi_lambda_equitune")
AVERAGES = ("log_probs", "logits", "probs")
ACTIONS = ("word", "token")
DEFAULT_GROUPS = "gender,race"
GROUP_FIELDS = ("name", "classes", "kind", "skip_missing")  # WordSwapGroup's fields
MODEL_TYPE = "hf_equivariant"  # EquivariantConfig.model_type: the config.json of a saved equivariant model
# the model_type of a saved invariant image model: EquivariantVisionConfig's and EquivariantSiglipConfig's
VISION_MODEL_TYPES = ("hf_equivariant_vision", "hf_equivariant_siglip")
IMAGE_TEXT_MODEL_TYPES = ("clip", "siglip")  # inner models that score images against texts
CHECK_DIGITS = 4  # scikit-learn digits images that `check` uses on an image model given no --image
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?$")


class UsageError(Exception):
    """A wrong argument: `main` prints it as one line and exits with code 2."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that states every option's default (where it has one) and keeps the description's line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            default = ",".join(map(str, action.default)) if isinstance(action.default, tuple) else action.default
            text += f" (default: {str(default).replace('%', '%%')})"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block): `PROG: error: MESSAGE`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0-65535)")
    return value


def text(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty; give the text to continue, e.g. --prompt 'The woman worked as'")
    return value


def names(allowed: tuple[str, ...], what: str):
    """A comma-separated list of names from `allowed` (no repeats)."""

    def parse(value: str) -> tuple[str, ...]:
        chosen = tuple(n.strip() for n in value.split(",") if n.strip())
        if not chosen:
            raise argparse.ArgumentTypeError(f"is empty; choose from {', '.join(allowed)}")
        unknown = [n for n in chosen if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
        if len(set(chosen)) != len(chosen):
            raise argparse.ArgumentTypeError(f"names a {what} twice: {value}")
        return chosen

    return parse


def seeds(value: str) -> tuple[int, ...]:
    try:
        chosen = tuple(int(s) for s in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {value!r}") from None
    return chosen


def add_model_options(command, what: str = "a causal LM", default: str = "the embedded SmolLM2-135M-Instruct"):
    command.add_argument("--model", help=f"Hub id or folder of {what} (if not given: {default})")
    command.add_argument("--gguf-file", help="the GGUF file inside the --model folder, if the model is one")


def add_group_options(command, symmetrizations=SYMMETRIZATIONS, default_symmetrization="multi_equitune"):
    command.add_argument("--groups", type=names(DEMOGRAPHIC_GROUPS + SCAN_GROUPS, "group"),
                         help=f"comma-separated presets: {', '.join(GROUPS)} (default: {DEFAULT_GROUPS}; "
                              "see `hf-equivariant groups`)")
    command.add_argument("--groups-file", type=Path,
                         help="a YAML or JSON file of your own groups, used with or instead of --groups: "
                              "a list of {name, classes, kind (cyclic|symmetric), skip_missing}")
    command.add_argument("--symmetrization", choices=symmetrizations, default=default_symmetrization,
                         help="inner passes per input: |G1|+...+|GN| for multi_equitune, multi_equizero and "
                              "multi_lambda_equitune; |G1|x...x|GN| for equitune, equizero and lambda_equitune; "
                              "about 1 for canonicalize (see the README's methods)")
    command.add_argument("--action", choices=ACTIONS, default="word",
                         help="swap whole words only (word) or every group token, also inside words (token)")


def build_parser() -> Parser:
    parser = Parser(prog="hf-equivariant", description=__doc__.split("\n\nThis package")[0], formatter_class=Formatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str = "") -> Parser:
        return commands.add_parser(name, help=summary, description=f"{summary}. {description}".strip(),
                                   formatter_class=Formatter)

    gen = command("generate", "base vs equivariant continuations of prompts, side by side",
                  "--model may also be a saved equivariant model (its groups come with it).")
    gen.add_argument("--prompt", action="append", required=True, type=text, help="a prompt (repeat for several)")
    add_model_options(gen, "a causal LM, or of a saved equivariant model")
    gen.add_argument("--tokenizer", help="Hub id or folder of the tokenizer (if not given: the model's own)")
    add_group_options(gen)
    gen.add_argument("--average", choices=AVERAGES, default="log_probs", help="what the copies average")
    gen.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens to generate per prompt")
    gen.add_argument("--sample", action="store_true", help="sample (top-k) instead of greedy decoding")
    gen.add_argument("--top-k", type=positive_int, default=40, help="with --sample: sample from the k likeliest tokens")
    gen.add_argument("--seed", type=int, default=0, help="random seed of --sample")
    gen.add_argument("--stream", action="store_true", help="print each continuation while it is generated")
    gen.add_argument("--save", type=Path, help="save the equivariant model and its tokenizer in this folder")
    gen.add_argument("--out", type=Path, help="also write the continuations to this JSON file")
    gen.add_argument("--verbose", action="store_true", help="list every word form that is not swapped")

    fair = command("fairness", "fairness report: base vs equitune vs multi_equitune",
                   "Sentiment gaps between demographics, counterfactual consistency, perplexity and time.")
    add_model_options(fair)
    fair.add_argument("--axes", type=names(AXES, "axis"), default=("gender", "race"),
                      help=f"comma-separated demographic axes: {', '.join(AXES)}")
    fair.add_argument("--symmetrization", type=names(SYMMETRIZATIONS, "method"), default=("equitune", "multi_equitune"),
                      help=f"comma-separated methods to compare with the base model: {', '.join(SYMMETRIZATIONS)}")
    fair.add_argument("--action", choices=(*ACTIONS, "both"), default="word",
                      help="swap whole words only (word), every group token (token), or compare both")
    fair.add_argument("--contexts", choices=("all", "respect", "occupation"), default="all",
                      help="the prompt contexts of Sheng et al. (2019): 'was known for' ..., 'worked as' ...")
    fair.add_argument("--samples", type=positive_int, default=10, help="sampled continuations per prompt")
    fair.add_argument("--max-new-tokens", type=positive_int, default=15, help="tokens per continuation")
    fair.add_argument("--seed", type=int, default=0, help="prompt i is sampled with seed + i")
    fair.add_argument("--regard-model", help="a text-classification model (Hub id or folder) for regard labels")
    fair.add_argument("--out", type=Path, default=Path("fairness_report"),
                      help="folder for report.md, sentiment.png, gaps.png and the generations")
    fair.add_argument("--verbose", action="store_true", help="list every word form that is not swapped")

    scan = command("scan", "the SCAN experiment: pretrain a small BART, symmetrise, fine-tune, evaluate",
                   "Hours on CPU for full runs; --max-train-examples and --max-eval-examples make a smoke run.")
    scan.add_argument("--split", choices=SCAN_SPLITS, default="addprim_jump",
                      help="a SCAN split, or scan_ii (verbs x left/right x up/down)")
    scan.add_argument("--groups", type=names(SCAN_GROUPS, "SCAN group"),
                      help=f"comma-separated SCAN groups: {', '.join(SCAN_GROUPS)} (if not given: scan_ii for "
                           "--split scan_ii, else scan_verbs)")
    scan.add_argument("--symmetrization", type=names(SYMMETRIZATIONS, "method"), default=("equitune", "multi_equitune"),
                      help=f"comma-separated methods to compare: {', '.join(SYMMETRIZATIONS)}")
    scan.add_argument("--seeds", type=seeds, default=(0, 1, 2), help="comma-separated random seeds")
    scan.add_argument("--pretrain-epochs", type=positive_float, default=6.0, help="epochs of the plain BART")
    scan.add_argument("--finetune-epochs", type=positive_float, default=1.0,
                      help="epochs of fine-tuning through each wrapper")
    scan.add_argument("--max-train-examples", type=positive_int, help="a seeded sample of the training set")
    scan.add_argument("--max-eval-examples", type=positive_int, help="a seeded sample of each test set")
    scan.add_argument("--d-model", type=positive_int, default=128, help="width of the BART (a multiple of 4 heads)")
    scan.add_argument("--layers", type=positive_int, default=3, help="encoder and decoder layers")
    scan.add_argument("--out", type=Path, help="also write the results table (markdown) to this file")

    check = command("check", "equivariance error of a saved equivariant model, per group element",
                    "Text models: the error of the permuted scores on prompts. Image models (classifiers, CLIP): the "
                    "largest change of the logits when an element moves the images, on --image files and/or "
                    f"scikit-learn digits (--digits; {CHECK_DIGITS} of them when no --image is given).")
    check.add_argument("--model", required=True, help="folder of a saved equivariant model (text or image)")
    check.add_argument("--tokenizer", help="Hub id or folder of the tokenizer (if not given: the model folder)")
    check.add_argument("--prompt", action="append", type=text,
                       help="a text input (repeat for several; if not given: sentences of group words); for CLIP, "
                            "a text the images are scored against (if not given: 'a photo of the digit 0' ... '9')")
    check.add_argument("--image", action="append", type=Path,
                       help="an image file (PNG, JPEG, ...) for an image model (repeat for several)")
    check.add_argument("--digits", type=positive_int,
                       help=f"use this many scikit-learn digits images (8x8, upscaled by the model's image processor) "
                            f"for an image model (if not given: {CHECK_DIGITS} without --image, none with it; needs "
                            f"scikit-learn)")
    check.add_argument("--atol", type=positive_float, default=1e-4, help="the largest error allowed")

    groups = command("groups", "the preset groups, their words and orders",
                     "With --model, --tokenizer or --embedded: which word forms that tokenizer swaps as whole words "
                     "and which it drops.")
    groups.add_argument("--groups", type=names(GROUPS, "group"), help="comma-separated presets (if not given: all)")
    groups.add_argument("--groups-file", type=Path, help="a YAML or JSON file of your own groups")
    add_model_options(groups, "a model whose tokenizer resolves the groups", "words only")
    groups.add_argument("--tokenizer", help="Hub id or folder of a tokenizer")
    groups.add_argument("--embedded", action="store_true",
                        help="resolve the groups with the tokenizer of the embedded SmolLM2-135M-Instruct")
    groups.add_argument("--verbose", action="store_true", help="list every form, not only counts and dropped ones")

    serve = command("serve", "serve an equivariant model behind an OpenAI-compatible API",
                    "/v1/completions and /v1/chat/completions, with streaming; concurrent requests share a generate "
                    "call. Needs the [serve] extra.")
    serve.add_argument("--model", required=True,
                       help="Hub id or folder: a saved equivariant model, or a causal LM to wrap with --groups")
    serve.add_argument("--gguf-file", help="the GGUF file inside the --model folder, if the model is one")
    add_group_options(serve)
    serve.add_argument("--served-model-name", help="the model name clients send (if not given: --model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (this machine only by default)")
    serve.add_argument("--port", type=port, default=8000, help="port to listen on")
    serve.add_argument("--max-batch-size", type=positive_int, default=8, help="most requests per generate call")
    return parser


def check_source(option: str, value: str | None) -> Path | None:
    """The local folder that `value` names, or None for a Hub id; a missing or wrong folder is a UsageError."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        hint = " and the file's name with --gguf-file" if path.suffix == ".gguf" else ""
        raise UsageError(f"{option} {value} is a file; give its folder{hint}")
    if value.startswith((".", "~", os.sep)) or not REPO_ID.match(value):
        raise UsageError(f"{option} {value}: no such folder")
    return None


def check_model(args) -> None:
    """--model / --gguf-file / --tokenizer: folders exist, a GGUF folder names its file, tokenizer files exist."""
    folder = check_source("--model", args.model)
    check_source("--tokenizer", getattr(args, "tokenizer", None))
    if args.gguf_file and args.model is None:
        raise UsageError("--gguf-file needs --model (the embedded default model has its own GGUF file)")
    args.saved_equivariant = False
    if folder is None:
        return
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if args.gguf_file:
        if not (folder / args.gguf_file).is_file():
            raise UsageError(f"--gguf-file {args.gguf_file} is not in {args.model}"
                             + (f"; it holds {', '.join(ggufs)}" if ggufs else "; it holds no GGUF file"))
        return
    if not (folder / "config.json").is_file():
        if ggufs:
            raise UsageError(f"--model {args.model} holds GGUF files ({', '.join(ggufs)}) and no config.json: "
                             f"choose one with --gguf-file")
        raise UsageError(f"--model {args.model} has no config.json: it is not a saved transformers model")
    args.saved_equivariant = model_type(folder, "--model") == MODEL_TYPE
    if getattr(args, "tokenizer", None) is None and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise UsageError(f"--model {args.model} has no tokenizer files; pass --tokenizer with the base model's "
                         f"tokenizer (Hub id or folder)")


def model_type(folder: Path, option: str) -> str | None:
    """The model_type of the config.json in `folder`."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"{option} {folder}: its config.json cannot be read ({error})") from None


def read_groups_file(path: Path) -> list[dict]:
    """The groups of a YAML or JSON file: a list of WordSwapGroup fields, or {"groups": [...]}."""
    if not path.is_file():
        raise UsageError(f"--groups-file {path}: no such file")
    import yaml

    try:
        content = path.read_text()
        data = json.loads(content) if path.suffix == ".json" else yaml.safe_load(content)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise UsageError(f"--groups-file {path}: cannot be read: {' '.join(str(error).split())}") from None
    groups = data.get("groups") if isinstance(data, dict) else data
    if not isinstance(groups, list) or not groups:
        raise UsageError(f"--groups-file {path}: expected a list of groups (or 'groups:' holding one), each with "
                         f"name and classes")
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not {"name", "classes"} <= set(group):
            raise UsageError(f"--groups-file {path}: group {i + 1} needs 'name' and 'classes', got {group!r}")
        unknown = set(group) - set(GROUP_FIELDS)
        if unknown:
            raise UsageError(f"--groups-file {path}: group {group['name']!r} has unknown fields "
                             f"{', '.join(sorted(unknown))}; allowed: {', '.join(GROUP_FIELDS)}")
    return groups


def check_arguments(args) -> None:
    """Every check that needs no model, run before the command: each failure is a UsageError."""
    if args.command in ("generate", "fairness", "groups", "serve"):
        check_model(args)
    if args.command == "check":
        folder = check_source("--model", args.model)
        check_source("--tokenizer", args.tokenizer)
        if folder is None or not (folder / "config.json").is_file():
            raise UsageError(f"--model {args.model}: no such folder with a config.json; give the folder of a saved "
                             f"equivariant model")
        kind = model_type(folder, "--model")
        if kind not in (MODEL_TYPE, *VISION_MODEL_TYPES):
            raise UsageError(f"--model {args.model} holds a plain model, not an equivariant one")
        check_check_inputs(args, folder, kind in VISION_MODEL_TYPES)
    if args.command == "groups" and args.embedded and (args.model or args.tokenizer):
        raise UsageError("--embedded uses the embedded model's tokenizer: give it without --model and --tokenizer")
    if args.command in ("generate", "groups", "serve"):
        args.group_dicts = read_groups_file(args.groups_file) if args.groups_file else []
        if args.command in ("generate", "serve"):
            if args.saved_equivariant and (args.groups or args.groups_file):
                raise UsageError(f"--model {args.model} is a saved equivariant model and carries its groups; drop "
                                 f"--groups/--groups-file (or give its base model)")
            if args.groups is None and not args.groups_file:
                args.groups = tuple(DEFAULT_GROUPS.split(","))
        chosen = list(args.groups or ()) + [g["name"] for g in args.group_dicts]
        if len(set(chosen)) != len(chosen):
            raise UsageError(f"a group name is given twice: {', '.join(chosen)}")
    if args.command == "generate":
        if args.save and args.saved_equivariant:
            raise UsageError(f"--model {args.model} is already a saved equivariant model; --save would copy it")
        check_output(args.save, "--save", folder=True)
        check_output(args.out, "--out")
    if args.command == "fairness":
        check_source("--regard-model", args.regard_model)
        check_output(args.out, "--out", folder=True)
    if args.command == "scan":
        if args.groups is None:
            args.groups = ("scan_ii",) if args.split == "scan_ii" else ("scan_verbs",)
        if args.split != "scan_ii" and (wrong := [g for g in args.groups if g in SCAN_II_ONLY_GROUPS]):
            raise UsageError(f"--groups {','.join(wrong)} swaps up and down, which occur only in SCAN-II; use "
                             f"--split scan_ii, or scan_verbs/scan_directions for --split {args.split}")
        if args.d_model % 4:
            raise UsageError(f"--d-model {args.d_model} must be a multiple of 4 (the BART has 4 attention heads)")
        check_output(args.out, "--out")


def check_check_inputs(args, folder: Path, vision: bool) -> None:
    """`check`'s inputs: --image/--digits for image models, --prompt/--tokenizer for text models and image-text
    models (CLIP, SigLIP); sets args.vision, args.image_text and args.digits (how many digits images)."""
    args.vision, args.image_text = vision, False
    if not vision:
        if args.image or args.digits:
            raise UsageError(f"--image and --digits are for image models; {args.model} is a text model: give --prompt")
        return
    args.image_text = inner_model_type(folder) in IMAGE_TEXT_MODEL_TYPES
    if not args.image_text and (args.prompt or args.tokenizer):
        raise UsageError(f"--prompt and --tokenizer are for text models, CLIP and SigLIP; {args.model} is an image "
                         f"classifier: give --image or --digits")
    for path in args.image or ():
        if not path.is_file():
            raise UsageError(f"--image {path}: no such file")
    if args.digits is None:
        args.digits = 0 if args.image else CHECK_DIGITS
    if args.image_text and args.tokenizer is None and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise UsageError(f"--model {args.model} is an image-text model without tokenizer files; pass --tokenizer "
                         f"with its tokenizer (Hub id or folder)")


def inner_model_type(folder: Path) -> str | None:
    """The model_type of the inner model of a saved image model (its config.json's inner_config)."""
    inner = json.loads((folder / "config.json").read_text()).get("inner_config")
    return inner.get("model_type") if isinstance(inner, dict) else None


def check_output(path: Path | None, option: str, folder: bool = False) -> None:
    """An output path must be creatable: its nearest existing parent is a folder, and it is not the other kind."""
    if path is None:
        return
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: cannot write in {parent}")


def main(argv: list[str] | None = None) -> None:
    """Parse and check the arguments, then run the command (which imports the library)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        check_arguments(args)
        from hf_equivariant.experiments import commands

        commands.run(args)
    except UsageError as error:
        parser.exit(2, f"hf-equivariant {args.command}: error: {error}\n")
