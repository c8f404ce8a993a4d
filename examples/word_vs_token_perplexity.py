"""Perplexity of the word and token actions side by side, on the embedded model (SmolLM2-135M-Instruct).

    python examples/word_vs_token_perplexity.py [--groups gender,race,sexual_orientation]

Held-out text: the sentences of hf_equivariant/data/fairness_heldout.txt (they mention demographic words).
Prints each model's perplexity and its ratio to the base model, for equitune and multi_equitune with each
action, all in one run.
"""

from __future__ import annotations

import argparse
import time
import warnings

from hf_equivariant import make_equivariant
from hf_equivariant.experiments import commands
from hf_equivariant.experiments.fairness import held_out_texts, perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    args = parser.parse_args()
    base, tokenizer = commands.load_model_and_tokenizer(None)
    texts = held_out_texts()
    rows = [("base", "", base)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        for symmetrization in ("equitune", "multi_equitune"):
            for action in ("token", "word"):
                model = make_equivariant(base, commands.parse_groups(args.groups), tokenizer, symmetrization,
                                         action=action)
                rows.append((symmetrization, action, model))
    print(f"\n{len(texts)} held-out sentences, groups {args.groups}\n")
    print("| model | action | perplexity | x base | seconds |")
    print("| --- | --- | ---: | ---: | ---: |")
    base_ppl = None
    for name, action, model in rows:
        start = time.perf_counter()
        value = perplexity(model, tokenizer, texts)
        base_ppl = base_ppl or value
        print(f"| {name} | {action} | {value:.2f} | {value / base_ppl:.3f} | {time.perf_counter() - start:.0f} |")


if __name__ == "__main__":
    main()
