"""GPU figures: a GPT-2-small-sized model (random weights) in bf16 with SDPA attention, all in one run.

    python benchmarks/bench_gpu.py [--batch 8] [--new-tokens 64] [--out gpu.json]
    python benchmarks/bench_gpu.py --tiny          # a small model and few tokens: a smoke run on CPU

Groups shaped like gender x race x sexual orientation (2 x 4 x 2: equitune 16 copies, multi_equitune 8) over
synthetic token ids; each prompt holds one word of each factor, as the fairness prompts do.
  1. generation (greedy, --new-tokens each, dynamic cache): useful tokens/s and peak memory for plain, the
     K-row floors (the base model on all copies as one batch), multi_equitune, multi_equitune+dedup, equitune;
  2. a training step (AdamW, --train-length tokens per row, labels = inputs): tokens/s and peak memory;
  3. cache_implementation="static", where generate() compiles the decoding step (torch.compile, mode
     "reduce-overhead": CUDA graphs), plain vs multi_equitune: first-call (compile) time, tokens/s, same
     tokens as with the dynamic cache;
  4. exactness on the device in fp32: max |logits(g x)[g v] - logits(x)[v]| of multi_equitune, and equal
     tokens with and without deduplication and on the compiled static-cache path.
Median of --rounds; every method warmed up first. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback

import torch
from transformers import CompileConfig, GPT2Config, GPT2LMHeadModel

from hf_equivariant import TokenSwapGroup, make_equivariant


def factors(vocab_size: int) -> list[TokenSwapGroup]:
    """2 x 4 x 2 factors on token ids 1000-1021 (gender has three aligned words per class)."""
    return [
        TokenSwapGroup("gender", "cyclic", [["man", "he", "his"], ["woman", "she", "her"]],
                       [[1000, 1003], [1001, 1004], [1002, 1005]], vocab_size),
        TokenSwapGroup("race", "cyclic", [["Black"], ["White"], ["Asian"], ["Hispanic"]],
                       [[1010, 1011, 1012, 1013]], vocab_size),
        TokenSwapGroup("sexual_orientation", "cyclic", [["gay"], ["straight"]], [[1020, 1021]], vocab_size),
    ]


def prompts(batch: int, length: int, vocab_size: int, device) -> torch.Tensor:
    """Random prompts, each with one race, orientation and gender word, the demographics cycling over the batch."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2000, vocab_size, (batch, length), generator=generator)
    for i in range(batch):
        ids[i, 1:4] = torch.tensor([1010 + i % 4, 1020 + (i // 4) % 2, 1000 + 3 * ((i // 8) % 2)])
    return ids.to(device)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(run, rounds: int, device) -> dict:
    """Median seconds of `run` after one warm-up, and the peak memory (GiB) of a run, with its last output."""
    output = run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        output = run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"seconds": statistics.median(times), "peak_gib": peak, "output": output}


def wrappers(base, groups) -> dict:
    models = {name: make_equivariant(base, groups, symmetrization=name.split("+")[0])
              for name in ("multi_equitune", "multi_equitune+dedup", "equitune")}
    for name in ("multi_equitune", "equitune"):
        models[name].config.deduplicate = False
    return models


def generation(base, models, ids, new_tokens: int, rounds: int, device) -> dict:
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    multi = models["multi_equitune+dedup"]
    copies = multi.transform_ids(ids)
    distinct = copies[multi.assign_rows_and_reorder_cache(copies, ids.shape[0]).representatives]
    inputs = {
        "plain": (base, ids),
        f"floor K={multi.num_copies}": (base, copies),
        f"floor K={models['equitune'].num_copies}": (base, models["equitune"].transform_ids(ids)),
        f"floor distinct={len(distinct)}": (base, distinct),
        **{name: (model, ids) for name, model in models.items()},
    }
    results = {}
    for name, (model, input_ids) in inputs.items():
        def run(model=model, input_ids=input_ids):
            return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        results[name] = measure(run, rounds, device)
        results[name]["tokens_per_s"] = ids.shape[0] * new_tokens / results[name]["seconds"]
        print(name, {k: v for k, v in results[name].items() if k != "output"}, flush=True)
    results["same tokens, multi_equitune and +dedup"] = torch.equal(results["multi_equitune"]["output"],
                                                                    results["multi_equitune+dedup"]["output"])
    return results


def training(base, models, ids, rounds: int, device) -> dict:
    results = {}
    for name, model in {"plain": base, **models}.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

        def step(model=model, optimizer=optimizer):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        results[name] = measure(step, rounds, device)
        results[name]["tokens_per_s"] = ids.numel() / results[name]["seconds"]
        model.eval()
        del optimizer
        print("train", name, {k: v for k, v in results[name].items() if k != "output"}, flush=True)
    return results


def static_compiled(base, models, ids, new_tokens: int, rounds: int, device, reference: dict) -> dict:
    """Static cache: generate() compiles the decoding step (CompileConfig, forced off CUDA), plain vs wrapper.

    Mode "reduce-overhead" (CUDA graphs, the default) first; where it fails, "default" (no CUDA graphs).
    """
    results = {}
    for name in ("plain", "multi_equitune"):
        model = base if name == "plain" else models[name]
        for mode in ("reduce-overhead", "default") if device.type == "cuda" else ("default",):
            compile_config = CompileConfig(mode=mode)
            compile_config._compile_all_devices = device.type != "cuda"
            options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                           cache_implementation="static", compile_config=compile_config)

            def run(model=model, options=options):
                return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
            key = f"{name} ({mode})"
            try:
                synchronize(device)
                start = time.perf_counter()
                run()
                synchronize(device)
                first = time.perf_counter() - start
                results[key] = measure(run, rounds, device)
            except Exception:
                results[key] = {"error": traceback.format_exc(limit=-3)}
                print("static+compile", key, results[key]["error"], flush=True)
                continue
            results[key].update(first_call_seconds=first,
                                tokens_per_s=ids.shape[0] * new_tokens / results[key]["seconds"],
                                same_tokens_as_dynamic=torch.equal(results[key]["output"], reference[name]["output"]))
            print("static+compile", key, {k: v for k, v in results[key].items() if k != "output"}, flush=True)
            break
    return results


def exactness(base, groups, ids, new_tokens: int, device) -> dict:
    """In fp32: max |logits(g x)[g v] - logits(x)[v]| over the elements of each factor (multi_equitune), and
    whether deduplication and the compiled static-cache path give the tokens of the plain dynamic-cache path."""
    model = make_equivariant(base.float(), groups, symmetrization="multi_equitune")
    worst = 0.0
    logits = model(input_ids=ids, use_cache=False).logits
    for group in model.config.factors:
        for perm in group.permutation_tables().to(ids.device):
            moved = model(input_ids=perm[ids], use_cache=False).logits
            worst = max(worst, (moved[..., perm] - logits).abs().max().item())  # p(g v | g x) = p(v | x)
    options = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    deduplicated = model.generate(**options)
    model.config.deduplicate = False
    every_copy = model.generate(**options)
    compile_config = CompileConfig()
    compile_config._compile_all_devices = device.type != "cuda"
    compiled = model.generate(**options, cache_implementation="static", compile_config=compile_config)
    return {"max_equivariance_error": worst, "dedup_same_tokens": torch.equal(deduplicated, every_copy),
            "static_compiled_same_tokens": torch.equal(compiled, every_copy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--train-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model and 8 tokens (CPU smoke run)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = dict(n_layer=2, n_embd=64, n_head=2) if args.tiny else {}
    new_tokens = 8 if args.tiny else args.new_tokens
    config = GPT2Config(**size, attn_implementation="sdpa")  # GPT-2 small: 12 layers, 768 wide, 50,257 tokens
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config).to(device, torch.bfloat16).eval()
    groups = factors(config.vocab_size)
    models = wrappers(base, groups)
    ids = prompts(args.batch, args.prompt_length, config.vocab_size, device)
    train_ids = prompts(args.batch, args.train_length, config.vocab_size, device)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": args.batch, "prompt_length": args.prompt_length,
              "new_tokens": new_tokens, "train_length": args.train_length, "parameters": base.num_parameters()}
    print(report, flush=True)
    sections = {
        "generation": lambda: generation(base, models, ids, new_tokens, args.rounds, device),
        "training": lambda: training(base, models, train_ids, args.rounds, device),
        "static_compiled": lambda: static_compiled(base, models, ids, new_tokens, args.rounds, device,
                                                   report["generation"]),
        "fp32": lambda: exactness(base, groups, ids, new_tokens, device),
    }
    for name, section in sections.items():
        try:
            with torch.no_grad() if name != "training" else torch.enable_grad():
                report[name] = section()
        except Exception:  # report what broke and go on: one device run has to give every figure it can
            report[name] = {"error": traceback.format_exc()}
            print(report[name]["error"], flush=True)

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k != "output"}
        return value
    report = plain(report)
    for name in ("generation", "training", "static_compiled"):
        rows = {k: v for k, v in report.get(name, {}).items() if isinstance(v, dict) and "seconds" in v}
        if not rows:
            continue
        reference = next(row for method, row in rows.items() if method.startswith("plain"))["seconds"]
        print(f"\n{name} on {report['device']}\n")
        print("| method | s | tokens/s | x plain | peak GiB |\n| --- | ---: | ---: | ---: | ---: |")
        for method, row in rows.items():
            print(f"| {method} | {row['seconds']:.3f} | {row['tokens_per_s']:.0f} | {row['seconds'] / reference:.2f} "
                  f"| {row['peak_gib']:.2f} |")
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
