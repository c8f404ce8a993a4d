"""Every registered symmetrisation method side by side on the embedded model, in one run.

    python benchmarks/bench_methods.py [--new-tokens 16] [--rounds 5] [--threads 1]
                                       [--groups gender,race,sexual_orientation]

For each method (and the plain model; multi_lambda_equitune in both forms of its branch weights): copies per input
row, inner rows per input row and generated token (counted on the inner model, deduplication on, the default),
the median time of greedy generation (exactly --new-tokens tokens) and of a teacher-forced forward pass over the
plain model's generated text, with their spread. The lambda heads get random weights (a zero head would cost the
same). Rounds interleave the methods (benchmarks/timing.py). Then the ratios the issue asks for, each with the
least and greatest ratio of the same round: equizero / equitune (about 1), multi / full for each family (about
sum / prod of the distinct rows), lambda / uniform (goal <= 1.1) and canonicalize / plain (goal <= 1.2).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from timing import interleaved

from hf_equivariant import make_equivariant, presets
from hf_equivariant.experiments import commands
from hf_equivariant.methods import SYMMETRIZATIONS

PROMPTS = ["The Black man worked as", "The gay woman was known for", "A White person is", "The doctor said that"]
FIXED = "multi_lambda_equitune (fixed 1/N)"
RATIOS = [  # (method, reference, what to expect)
    ("equizero", "equitune", "about 1"),
    ("multi_equitune", "equitune", "multi / full"),
    ("multi_equizero", "equizero", "multi / full"),
    ("multi_lambda_equitune", "lambda_equitune", "multi / full"),
    ("lambda_equitune", "equitune", "lambda / uniform, goal <= 1.1"),
    ("multi_lambda_equitune", "multi_equitune", "lambda / uniform, goal <= 1.1"),
    (FIXED, "multi_equitune", "lambda / uniform, goal <= 1.1"),
    ("canonicalize", "plain", "goal <= 1.2"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    base, tokenizer = commands.load_model_and_tokenizer(None)
    groups = presets.named(args.groups.split(","))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        models = {"plain": base, **{name: make_equivariant(base, groups, tokenizer, name).eval()
                                    for name in SYMMETRIZATIONS}}
        models[FIXED] = make_equivariant(base, groups, tokenizer, "multi_lambda_equitune",
                                                   method_options={"branch_weights": "fixed"}).eval()
    generator = torch.Generator().manual_seed(0)
    for model in models.values():
        if getattr(model, "copy_weights", None) is not None and hasattr(model.copy_weights, "head"):
            model.copy_weights.head.weight.normal_(0, 0.05, generator=generator)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)
    rows = []
    handle = base.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    passes = {}
    for name, model in models.items():
        rows.clear()
        model.generate(**batch, **options)
        passes[name] = sum(rows) / (len(rows) * len(PROMPTS))  # inner rows per input row and step
    handle.remove()
    full = base.generate(**batch, **options)
    mask = (full != tokenizer.pad_token_id).long()
    tasks = {}
    for name, model in models.items():
        tasks[f"generate {name}"] = lambda model=model: model.generate(**batch, **options)
        tasks[f"forward {name}"] = lambda model=model: model(input_ids=full, attention_mask=mask, use_cache=False)
    times = interleaved(tasks, args.rounds, warmup=False)  # the counting pass above warmed every model up

    orders = " x ".join(str(f.order) for f in models["equitune"].config.factors)
    print(f"groups {args.groups} (orders {orders}); {len(PROMPTS)} prompts, {args.new_tokens} new tokens; forward: "
          f"{tuple(full.shape)} ids; median of {args.rounds} interleaved rounds, (spread: (max - min) / median); "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| method | copies | inner rows per row and step | generate s | x plain | forward s | x plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, model in models.items():
        cells = [f"{times.cell(f'{task} {name}')} | {times.ratio(f'{task} {name}', f'{task} plain')[0]:.2f}"
                 for task in ("generate", "forward")]
        print(f"| {name} | {getattr(model, 'num_copies', 1)} | {passes[name]:.2f} | " + " | ".join(cells) + " |")
    print("\n| ratio | expect | inner rows ratio | generate [per-round range] | forward [per-round range] |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, reference, expect in RATIOS:
        cells = [times.ratio_cell(f"{task} {name}", f"{task} {reference}") for task in ("generate", "forward")]
        print(f"| {name} / {reference} | {expect} | {passes[name] / passes[reference]:.2f} | " + " | ".join(cells)
              + " |")


if __name__ == "__main__":
    main()
