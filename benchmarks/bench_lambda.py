"""The cost of lambda weights: lambda_equitune vs equitune and multi_lambda_equitune vs multi_equitune, in one run.

    python benchmarks/bench_lambda.py [--rounds 5] [--new-tokens 16] [--groups gender,race,sexual_orientation]

On the embedded model (SmolLM2-135M-Instruct), each wrapper (deduplication on, the default) is timed on
  score     one forward pass over a batch of held-out sentences (hf_equivariant/data/fairness_heldout.txt), as
            perplexity or training computes it
  generate  greedy generation of exactly --new-tokens tokens from one prompt, with the KV cache
The lambda heads get random weights (their cost does not depend on them; zero weights would be as slow).
Each measurement runs --rounds times, interleaved across the wrappers; the median is reported, with the
ratios lambda / uniform side by side (goal <= 1.1) and the inner passes per token.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from hf_equivariant.fairness import held_out_texts

from hf_equivariant import cli, make_equivariant

PAIRS = {"lambda_equitune": "equitune", "multi_lambda_equitune": "multi_equitune"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default="The Black man worked as")
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    parser.add_argument("--sentences", type=int, default=8, help="held-out sentences in the scored batch")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    base, tokenizer = cli.load_model_and_tokenizer(None)
    groups = cli.parse_groups(args.groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        models = {name: make_equivariant(base, groups, tokenizer, symmetrization=name).eval()
                  for pair in PAIRS.items() for name in reversed(pair)}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in PAIRS:
            models[name].copy_weights.head.weight.normal_(0, 0.05, generator=generator)
    batch = tokenizer(held_out_texts()[: args.sentences], return_tensors="pt", padding=True)
    prompt = tokenizer(args.prompt, return_tensors="pt")
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)
    runs = {
        "score": lambda model: model(**batch),
        "generate": lambda model: model.generate(**prompt, **options),
    }
    times = {(task, name): [] for task in runs for name in models}
    with torch.no_grad():
        for run in runs.values():  # warm-up
            run(models["multi_equitune"])
        for _ in range(args.rounds):
            for task, run in runs.items():
                for name, model in models.items():
                    start = time.perf_counter()
                    run(model)
                    times[task, name].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}

    print(f"\ngroups {args.groups}; score: {args.sentences} held-out sentences, {batch['input_ids'].shape[1]} "
          f"tokens padded; generate: {args.prompt!r} + {args.new_tokens} tokens; median of {args.rounds} rounds; "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| method | passes per token | score s | generate s |")
    print("| --- | ---: | ---: | ---: |")
    for name, model in models.items():
        print(f"| {name} | {model.num_copies} | {median['score', name]:.3f} | {median['generate', name]:.3f} |")
    print("\n| lambda / uniform | score | generate |")
    print("| --- | ---: | ---: |")
    for weighted, uniform in PAIRS.items():
        ratios = [median[task, weighted] / median[task, uniform] for task in runs]
        print(f"| {weighted} / {uniform} | {ratios[0]:.3f} | {ratios[1]:.3f} |")
    print("(goal <= 1.1)")


if __name__ == "__main__":
    main()
