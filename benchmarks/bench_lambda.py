"""The cost of lambda weights: lambda_equitune vs equitune and multi_lambda_equitune (both forms of its branch
weights) vs multi_equitune, in one run.

    python benchmarks/bench_lambda.py [--rounds 5] [--new-tokens 16] [--threads 1]
                                      [--groups gender,race,sexual_orientation]

On the embedded model (SmolLM2-135M-Instruct), each wrapper (deduplication on, the default) is timed on
  score     one forward pass over a batch of held-out sentences (hf_equivariant/experiments/data/fairness_heldout.txt),
            as perplexity or training computes it
  generate  greedy generation of exactly --new-tokens tokens from one prompt, with the KV cache
The lambda heads get random weights (their cost does not depend on them; zero weights would be as slow).
Each measurement runs --rounds times, interleaved across the wrappers (benchmarks/timing.py); the median is
reported with its spread, and the ratios lambda / uniform (goal <= 1.1) with the least and greatest ratio of
the same round.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from timing import interleaved

from hf_equivariant import make_equivariant, presets
from hf_equivariant.experiments import commands
from hf_equivariant.experiments.fairness import held_out_texts

FIXED = "multi_lambda_equitune (fixed 1/N)"
PAIRS = {"lambda_equitune": "equitune", "multi_lambda_equitune": "multi_equitune", FIXED: "multi_equitune"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default="The Black man worked as")
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    parser.add_argument("--sentences", type=int, default=8, help="held-out sentences in the scored batch")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base, tokenizer = commands.load_model_and_tokenizer(None)
    groups = presets.named(args.groups.split(","))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        models = {name: make_equivariant(base, groups, tokenizer, symmetrization=name).eval()
                  for name in ("equitune", "lambda_equitune", "multi_equitune", "multi_lambda_equitune")}
        models[FIXED] = make_equivariant(base, groups, tokenizer, "multi_lambda_equitune",
                                                   method_options={"branch_weights": "fixed"}).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in PAIRS:
            models[name].copy_weights.head.weight.normal_(0, 0.05, generator=generator)
    batch = tokenizer(held_out_texts()[: args.sentences], return_tensors="pt", padding=True)
    prompt = tokenizer(args.prompt, return_tensors="pt")
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)
    tasks = {}
    for name, model in models.items():
        tasks[f"score {name}"] = lambda model=model: model(**batch)
        tasks[f"generate {name}"] = lambda model=model: model.generate(**prompt, **options)
    with torch.no_grad():
        times = interleaved(tasks, args.rounds)

    print(f"\ngroups {args.groups}; score: {args.sentences} held-out sentences, {batch['input_ids'].shape[1]} "
          f"tokens padded; generate: {args.prompt!r} + {args.new_tokens} tokens; median of {args.rounds} interleaved "
          f"rounds (spread: (max - min) / median); {torch.get_num_threads()} CPU thread(s)\n")
    print("| method | passes per token | score s | generate s |")
    print("| --- | ---: | ---: | ---: |")
    for name, model in models.items():
        print(f"| {name} | {model.num_copies} | {times.cell(f'score {name}')} | {times.cell(f'generate {name}')} |")
    print("\n| lambda / uniform (goal <= 1.1) | score [per-round range] | generate [per-round range] |")
    print("| --- | ---: | ---: |")
    for weighted, uniform in PAIRS.items():
        cells = [times.ratio_cell(f"{task} {weighted}", f"{task} {uniform}") for task in ("score", "generate")]
        print(f"| {weighted} / {uniform} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
