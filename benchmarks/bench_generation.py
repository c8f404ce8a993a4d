"""Generation speed of the equivariant wrappers on the embedded model, as ratios measured in one run.

    python benchmarks/bench_generation.py [--new-tokens 32] [--rounds 3] [--groups gender,race,sexual_orientation]

Times, with exactly --new-tokens greedy tokens each:
  plain           the base model on the prompt
  floor K         the base model on all K transformed prompts of a method as one batch (what an exact
                  K-copy method cannot beat)
  floor distinct  the base model on the distinct copies of multi_equitune only (the floor with dedup)
  multi_equitune  the wrapper, sum |Gi| copies, one batch, one KV cache (deduplication off)
  multi_equitune+dedup  the same with equal copies sharing rows (the default)
  equitune        the wrapper, prod |Gi| copies (deduplication off)
  ... (token)     the same wrappers with the token action (swaps inside words too); the others swap whole
                  words (the default word action)
  naive           the earlier research algorithm: no KV cache, a Python loop over the prod |Gi| group
                  elements, the whole context recomputed for every new token
Each method runs --rounds times, interleaved with the others (benchmarks/timing.py); the median is reported with
its spread, and each ratio of two wrappers with the least and greatest ratio of the same round.
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import torch
from timing import interleaved

from hf_equivariant import make_equivariant, presets
from hf_equivariant.experiments import commands


def naive_equitune_generate(base, factors, input_ids, new_tokens: int) -> torch.Tensor:
    """The old algorithm: for every token, every group element, the full context, no cache."""
    tables = [f.permutation_tables() for f in factors]
    elements = []
    for choice in itertools.product(*(range(len(t)) for t in tables)):
        perm = torch.arange(tables[0].shape[1])
        for table, g in zip(tables, choice):
            perm = table[g][perm]
        elements.append(perm)
    ids = input_ids
    for _ in range(new_tokens):
        scores = 0
        for perm in elements:
            logits = base(input_ids=perm[ids]).logits[:, -1]
            scores = scores + logits.log_softmax(-1)[:, perm] / len(elements)
        ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default="The Black man worked as")
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--naive-rounds", type=int, default=1)
    args = parser.parse_args()

    base, tokenizer = commands.load_model_and_tokenizer(None)
    groups = presets.named(args.groups.split(","))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        models = {
            f"{name}{' (token)' if action == 'token' else ''}": make_equivariant(
                base, groups, tokenizer, symmetrization=name.split("+")[0], action=action)
            for action in ("word", "token") for name in ("multi_equitune", "multi_equitune+dedup", "equitune")}
    for name, model in models.items():
        model.config.deduplicate = "dedup" in name
    ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)

    def generate(model, input_ids):
        return lambda: model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)

    multi = models["multi_equitune+dedup"]
    copies = multi.transform_ids(ids, multi.word_occurrences(ids))
    distinct = copies[multi.assign_rows_and_reorder_cache(copies, 1).representatives]
    k_multi, k_full, k_distinct = models["multi_equitune"].num_copies, models["equitune"].num_copies, len(distinct)
    methods = {
        "plain": generate(base, ids),
        f"floor K={k_multi}": generate(base, copies),
        f"floor K={k_full}": generate(base, models["equitune"].transform_ids(ids, multi.word_occurrences(ids))),
        f"floor distinct={k_distinct}": generate(base, distinct),
        **{name: generate(model, ids) for name, model in models.items()},
    }
    with torch.no_grad():
        times = interleaved(methods, args.rounds)
        factors = models["equitune"].config.factors
        naive = interleaved({"naive": lambda: naive_equitune_generate(base, factors, ids, args.new_tokens)},
                            args.naive_rounds, warmup=False)
    outputs = {**times.outputs, **naive.outputs}
    median = {**{name: times.median(name) for name in methods}, "naive": naive.median("naive")}
    spread = {**{name: times.spread(name) for name in methods}, "naive": naive.spread("naive")}

    print(f"\nprompt {args.prompt!r}, groups {args.groups} (prod {k_full}, sum {k_multi}, distinct {k_distinct}), "
          f"{args.new_tokens} new tokens, median of {args.rounds} rounds ({args.naive_rounds} for naive), "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| method | seconds | spread (max - min) / median | x plain |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.2f} | {100 * spread[name]:.0f}% | {seconds / median['plain']:.2f} |")
    ratios = [
        ("multi_equitune", f"floor K={k_multi}", "target <= 1.3"),
        ("equitune", f"floor K={k_full}", ""),
        ("multi_equitune+dedup", f"floor distinct={k_distinct}", ""),
        ("multi_equitune+dedup", "multi_equitune", ""),
        ("naive", "multi_equitune", "target >= 10"),
        ("naive", "multi_equitune+dedup", ""),
        ("naive", "equitune", ""),
        ("equitune", "multi_equitune", ""),
        ("multi_equitune+dedup", "multi_equitune+dedup (token)", "word / token action, target <= 1.1"),
        ("multi_equitune", "multi_equitune (token)", "word / token action"),
        ("equitune", "equitune (token)", "word / token action"),
    ]
    print()
    for a, b, note in ratios:
        same_rounds = "" if a == "naive" else " [{1:.2f}, {2:.2f} per round]".format(*times.ratio(a, b))
        print(f"{a} / {b}: {median[a] / median[b]:.2f}{same_rounds}" + (f"  ({note})" if note else ""))
    same = torch.equal(outputs["naive"], outputs["equitune (token)"])
    print(f"naive and equitune (token action, as naive) generate the same tokens: {same}")
    print(tokenizer.decode(outputs["multi_equitune+dedup"][0]))


if __name__ == "__main__":
    main()
