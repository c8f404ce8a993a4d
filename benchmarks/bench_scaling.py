"""How the wrappers scale with the number and size of factors, what deduplication saves, and memory.

    python benchmarks/bench_scaling.py [--rounds 3] [--parts scaling,demographic,memory] [--out docs/results]

On the embedded model (SmolLM2-135M), all in one run, as ratios to the plain model:
  1. forward (one 16-token prompt) and generation (16 new tokens) for N = 1..4 factors of size n = 2..4
     (synthetic factors over colour / animal / number / direction words; the prompt holds one word of
     each factor): equitune, multi_equitune, multi_equitune + dedup (generation up to 64 copies);
  2. a prompt without any group word, and the demographic prompts of the fairness evaluation under
     gender x race x sexual orientation: generation with and without dedup, plain generation of the
     distinct rows as one batch (the floor for dedup), and a forward pass with dedup (seconds);
  3. peak memory (sampled RSS of a fresh process) of a use_cache=False forward as the copies grow,
     with and without `max_inner_rows`, on a small random model with SmolLM2's 49k vocabulary.
Writes performance_scaling.png and prints markdown tables (kept in docs/results/performance.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from hf_equivariant import WordSwapGroup, cli, make_equivariant, presets
from hf_equivariant.fairness import AXES, build_prompts

WORDS = [("red", "blue", "green", "yellow"), ("cat", "dog", "bird", "fish"), ("one", "two", "three", "four"),
         ("north", "south", "east", "west")]
PROMPT = "The red cat walked one mile north before the young man in the old house said that"
PLAIN_PROMPT = "The old house stood along the road near the big river in the quiet town, and the story goes that"


def synthetic_groups(num_factors: int, size: int) -> list[WordSwapGroup]:
    return [WordSwapGroup(f"f{i}", [[w] for w in WORDS[i][:size]]) for i in range(num_factors)]


def timed(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_rows(model, run) -> int:
    rows = []
    handle = model.model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    run()
    handle.remove()
    return rows[0]


def scaling(base, tokenizer, rounds: int, new_tokens: int) -> list[dict]:
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)

    def forward(model):
        return lambda: model(input_ids=ids, use_cache=False)

    def generate(model):
        return lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)

    plain_forward, plain_generate = timed(forward(base), rounds), timed(generate(base), rounds)
    rows = []
    for num_factors, size in itertools.product(range(1, 5), range(2, 5)):
        groups = synthetic_groups(num_factors, size)
        models = {
            "equitune": make_equivariant(base, groups, tokenizer, "equitune"),
            "multi_equitune": make_equivariant(base, groups, tokenizer, "multi_equitune"),
            "multi_equitune+dedup": make_equivariant(base, groups, tokenizer, "multi_equitune"),
        }
        for name in ("equitune", "multi_equitune"):
            models[name].config.deduplicate = False
        row = {"factors": num_factors, "size": size, "prod": size ** num_factors, "sum": size * num_factors,
               "distinct": count_rows(models["multi_equitune+dedup"], forward(models["multi_equitune+dedup"]))}
        for name, model in models.items():
            row[f"forward {name}"] = timed(forward(model), rounds) / plain_forward
            if model.num_copies <= 64:
                row[f"generate {name}"] = timed(generate(model), rounds) / plain_generate
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def demographic_generation(base, tokenizer, rounds: int, new_tokens: int) -> list[dict]:
    """Generation time with and without dedup for a prompt without group words and the fairness prompts."""
    groups = [presets.GENDER, presets.RACE, presets.SEXUAL_ORIENTATION]
    fairness = [p.text for p in build_prompts([AXES[a] for a in ("sexual_orientation", "race", "gender")],
                                              {"worked as": "occupation"})]
    cases = {"no group word (1 prompt)": [PLAIN_PROMPT], "fairness prompts (16 demographics)": fairness}
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)
    results = []
    for case, prompts in cases.items():
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        row = {"case": case}
        row["plain"] = timed(lambda: base.generate(**batch, **options), rounds)
        row["forward plain"] = timed(lambda: base(**batch, use_cache=False), rounds)
        for symmetrization in ("multi_equitune", "equitune"):
            model = make_equivariant(base, groups, tokenizer, symmetrization)
            distinct = count_rows(model, lambda: model(**batch, use_cache=False))
            copies = model.transform_ids(batch["input_ids"])
            rows = model.assign_rows_and_reorder_cache(copies, len(prompts))
            floor_ids = copies[rows.representatives]
            floor_mask = batch["attention_mask"][rows.owners]
            row[f"{symmetrization} copies"] = model.num_copies * len(prompts)
            row[f"{symmetrization} distinct"] = distinct
            row[f"{symmetrization} floor"] = timed(lambda: base.generate(input_ids=floor_ids, attention_mask=floor_mask,
                                                                         **options), rounds)
            row[f"{symmetrization}+dedup"] = timed(lambda: model.generate(**batch, **options), rounds)
            row[f"forward {symmetrization}+dedup"] = timed(lambda: model(**batch, use_cache=False), rounds)
            model.config.deduplicate = False
            row[symmetrization] = timed(lambda: model.generate(**batch, **options), rounds)
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def memory_point(copies: int, cap: int | None) -> float:
    """Peak memory (MiB) that one use_cache=False forward with `copies` copies adds to a fresh process.

    The resident set size is sampled every half millisecond during the forward; glibc's fixed mmap threshold
    makes freed tensors leave the resident set at once, so the samples follow the live tensors.
    """
    code = f"""
import os, threading, time, torch, warnings
warnings.simplefilter("ignore")
from transformers import LlamaConfig, LlamaForCausalLM
from hf_equivariant import TokenSwapGroup, make_equivariant
torch.manual_seed(0)
config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
model = LlamaForCausalLM(config).eval()
size, factors = 2, {copies.bit_length() - 1}
groups = [TokenSwapGroup(f"f{{i}}", "cyclic", [["a"], ["b"]], [[100 + 2 * i, 101 + 2 * i]], 49152)
          for i in range(factors)]
model = make_equivariant(model, groups, symmetrization="equitune")
model.config.max_inner_rows = {cap}
ids = torch.tensor([[100 + 2 * i for i in range(factors)] + list(range(1000, 1064 - factors))])
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
before = rss()
sampler = threading.Thread(target=sample)
sampler.start()
with torch.no_grad():
    model(input_ids=ids, use_cache=False)
done.set()
sampler.join()
print((max(peak[0], rss()) - before) / 2**20)
"""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def memory(copies_list=(2, 4, 8, 16, 32, 64)) -> list[dict]:
    rows = [{"copies": k, "no cap": memory_point(k, None), "max_inner_rows=4": memory_point(k, 4)}
            for k in copies_list]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, marker in (("equitune", "o"), ("multi_equitune", "s"), ("multi_equitune+dedup", "^")):
        for panel, kind in ((left, "forward"), (right, "generate")):
            points = sorted((r["prod"], r[f"{kind} {name}"]) for r in rows if f"{kind} {name}" in r)
            panel.plot(*zip(*points), marker=marker, linestyle="", label=name)
    for panel, kind in ((left, "forward"), (right, "generation")):
        panel.set_xscale("log", base=2)
        panel.set_yscale("log", base=2)
        panel.set_xlabel("|G| = prod |Gi| (group order)")
        panel.set_ylabel(f"{kind} time / plain")
        panel.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--parts", default="scaling,demographic,memory", help="which of the three parts to run")
    args = parser.parse_args()
    parts = args.parts.split(",")
    warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
    if "scaling" in parts or "demographic" in parts:
        base, tokenizer = cli.load_model_and_tokenizer(None)
    print(f"{torch.get_num_threads()} CPU threads, {args.rounds} rounds (median), {args.new_tokens} new tokens\n")
    if "scaling" in parts:
        with torch.no_grad():
            scale = scaling(base, tokenizer, args.rounds, args.new_tokens)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        plot(scale, Path(args.out) / "performance_scaling.png")
        methods = ("equitune", "multi_equitune", "multi_equitune+dedup")
        print(table(scale, ["factors", "size", "prod", "sum", "distinct"] + [f"forward {m}" for m in methods]
                    + [f"generate {m}" for m in methods]) + "\n")
    if "demographic" in parts:
        with torch.no_grad():
            demographic = demographic_generation(base, tokenizer, args.rounds, args.new_tokens)
        print(table(demographic, list(demographic[0])) + "\n")
    if "memory" in parts:
        print(table(memory(), ["copies", "no cap", "max_inner_rows=4"]))


if __name__ == "__main__":
    main()
