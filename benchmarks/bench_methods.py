"""Every registered symmetrisation method side by side on the embedded model, in one run.

    python benchmarks/bench_methods.py [--new-tokens 16] [--rounds 3] [--groups gender,race,sexual_orientation]

For each method (and the plain model): inner rows per input row and generated token (counted on the inner
model, deduplication on, the default), the median time of greedy generation (exactly --new-tokens tokens)
and of a teacher-forced forward pass over the generated text, and their ratios to equitune and to the
plain model. Rounds interleave the methods.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from hf_equivariant import cli, make_equivariant
from hf_equivariant.methods import SYMMETRIZATIONS

PROMPTS = ["The Black man worked as", "The gay woman was known for", "A White person is", "The doctor said that"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    base, tokenizer = cli.load_model_and_tokenizer(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {"plain": base, **{name: make_equivariant(base, cli.parse_groups(args.groups), tokenizer, name).eval()
                                    for name in SYMMETRIZATIONS}}
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)
    rows = []
    handle = base.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    texts, passes = {}, {}
    for name, model in models.items():
        rows.clear()
        texts[name] = model.generate(**batch, **options)
        passes[name] = sum(rows) / (len(rows) * len(PROMPTS))  # inner rows per input row and step
    handle.remove()
    times = {name: {"generate": [], "forward": []} for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.generate(**batch, **options)
            times[name]["generate"].append(time.perf_counter() - start)
            full = texts["plain"]
            start = time.perf_counter()
            model(input_ids=full, attention_mask=(full != tokenizer.pad_token_id).long(), use_cache=False)
            times[name]["forward"].append(time.perf_counter() - start)
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    orders = " x ".join(str(f.order) for f in models["equitune"].config.factors)
    print(f"groups {args.groups} (orders {orders}); {len(PROMPTS)} prompts, {args.new_tokens} new tokens, "
          f"median of {args.rounds} rounds")
    print("| method | copies | inner rows per row and step | generate s | x equitune | x plain | forward s "
          "| x equitune | x plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, m in median.items():
        copies = getattr(models[name], "num_copies", 1)
        cells = [f"{m[k]:.2f} | {m[k] / median['equitune'][k]:.2f} | {m[k] / median['plain'][k]:.2f}"
                 for k in ("generate", "forward")]
        print(f"| {name} | {copies} | {passes[name]:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
