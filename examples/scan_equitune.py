"""The paper's SCAN experiments: pretrain a small seq2seq transformer, symmetrise it, fine-tune, evaluate.

    python examples/scan_equitune.py                       # all four experiments, writes docs/results/scan.md
    python examples/scan_equitune.py --experiments addprim_jump --seeds 0 --out /tmp/scan.md

Experiments (mean and std of exact-match accuracy over the seeds):
  addprim_jump           SCAN add-primitive "jump" split, group SCAN_VERBS (C4 over jump/run/walk/look)
  template_around_right  SCAN template split, group SCAN_DIRECTIONS (left <-> right)
  scan_ii                SCAN-II, verb x left/right x up/down (equitune 8 passes, multi_equitune 6)
  scan_ii_canonical_class  SCAN-II: equitune, multi_equitune (held-out words first, the presets) and the seen
                           words first for each multi method (--variants picks which)
Runs on CPU (about an hour per SCAN experiment with 3 seeds on 2 cores) and on a GPU when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from hf_equivariant import presets
from hf_equivariant.experiments.scan_experiment import ScanExperiment, results_table, run

SCAN_II_SEEN_FIRST = (presets.SCAN_II_VERBS.with_class_first("run"), presets.SCAN_DIRECTIONS.with_class_first("right"),
                      presets.SCAN_II_UP_DOWN.with_class_first("down"))
EXPERIMENTS = {
    # canonicalize sends the first verb's class to class 0, which the preset lists first: jump, the held-out verb.
    # The variant lists a verb the model saw in composition first.
    "addprim_jump": ScanExperiment(split="addprim_jump", groups=("scan_verbs",), pretrain_epochs=6,
                                   finetune_epochs=0.5,
                                   variants=(("canonicalize (run first)", "canonicalize",
                                              (presets.SCAN_VERBS.with_class_first("run"),)),)),
    "template_around_right": ScanExperiment(
        split="template_around_right", groups=("scan_directions",), pretrain_epochs=6, finetune_epochs=0.5
    ),
    "scan_ii": ScanExperiment(
        split="scan_ii", groups=("scan_ii_verbs", "scan_directions", "scan_ii_up_down"), pretrain_epochs=2.5,
        finetune_epochs=0.75, max_eval_examples=1000,
    ),
    # Why multi_equitune trails equitune on SCAN-II: every factor's class 0 (jump, left, up) is the held-out word,
    # and the multi design reads the other factors canonicalised, i.e. as class 0. The same pretrained model,
    # with each factor's classes in the other order (class 0 the word seen in composition).
    "scan_ii_canonical_class": ScanExperiment(
        split="scan_ii", groups=("scan_ii_verbs", "scan_directions", "scan_ii_up_down"), pretrain_epochs=2.5,
        finetune_epochs=0.25, max_eval_examples=1000, symmetrizations=("equitune", "multi_equitune"),
        variants=tuple((f"{method} (seen class first)", method, SCAN_II_SEEN_FIRST)
                       for method in ("multi_equitune", "multi_equizero", "multi_lambda_equitune")),
    ),
}


def time_ratio(rows: list[dict], key: str) -> float:
    """Mean over seeds of equitune's / multi_equitune's time for the fine-tuned stage."""
    def mean(stage):
        return statistics.mean(r[key] for r in rows if r["stage"] == stage)
    return mean("equitune fine-tuned") / mean("multi_equitune fine-tuned")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread" + ("s" if threads > 1 else "")


def section(name: str, config: ScanExperiment, rows: list[dict], seconds: float, command: str, device: str) -> str:
    fields = ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config)
                       if f.name not in ("progress", "variants"))
    lines = [f"## {name}", "", f"Reproduce: `{command}`", "", f"Configuration: {fields}. Device: {device}.", "",
             *(f"Variant: {label} = {method} over "
               + " x ".join(f"{g.name} (class 0: {g.classes[0][0]})" for g in groups) + "."
               for label, method, groups in config.variants),
             *([""] if config.variants else []), results_table(rows), ""]
    passes = {r["stage"]: r["passes"] for r in rows}
    if config.split == "scan_ii" and {"equitune fine-tuned", "multi_equitune fine-tuned"} <= passes.keys():
        lines += [
            f"Measured time ratio equitune / multi_equitune ({passes['equitune fine-tuned']} vs "
            f"{passes['multi_equitune fine-tuned']} inner passes): fine-tuning "
            f"{time_ratio(rows, 'train_seconds'):.2f}x, evaluation {time_ratio(rows, 'eval_seconds'):.2f}x.", "",
        ]
    lines += [f"Wall time of the experiment: {seconds / 60:.0f} min.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--symmetrizations", help="comma-separated registered methods to compare (default: all; "
                        "'' for none: only the experiment's variants)")
    parser.add_argument("--variants", help="comma-separated methods whose variants to run (default: every variant; "
                        "'' for none)")
    parser.add_argument("--finetune-epochs", type=float, help="override the experiment's (0: zero-shot only)")
    parser.add_argument("--max-eval-examples", type=lambda v: None if v == "all" else int(v), default=False,
                        help="override the experiment's sample of each test set ('all': the full test sets)")
    parser.add_argument("--out", default="docs/results/scan.md")
    parser.add_argument("--rows-json", help="also write every result row (per seed and stage) as JSON here")
    args = parser.parse_args()

    command = shlex.join(["python", "examples/scan_equitune.py", *sys.argv[1:]])
    out = Path(args.out)
    all_rows = {}
    for name in args.experiments.split(","):
        config = dataclasses.replace(EXPERIMENTS[name], seeds=tuple(int(s) for s in args.seeds.split(",")))
        if args.max_eval_examples is not False:
            config = dataclasses.replace(config, max_eval_examples=args.max_eval_examples)
        if args.finetune_epochs is not None:
            config = dataclasses.replace(config, finetune_epochs=args.finetune_epochs)
        if args.symmetrizations is not None:
            config = dataclasses.replace(config, symmetrizations=tuple(filter(None, args.symmetrizations.split(","))))
        if args.variants is not None:
            methods = [m.strip() for m in args.variants.split(",") if m.strip()]
            unknown = set(methods) - {method for _, method, _ in config.variants}
            if unknown:
                parser.error(f"--variants: {name} has no variant of {', '.join(sorted(unknown))}; its variants: "
                             f"{', '.join(method for _, method, _ in config.variants) or 'none'}")
            config = dataclasses.replace(config, variants=tuple(v for v in config.variants if v[1] in methods))
        start = time.perf_counter()
        rows = run(config)
        text = section(name, config, rows, time.perf_counter() - start, command, device_name())
        print(text, flush=True)
        write_section(out, name, text)
        if args.rows_json:
            all_rows[name] = rows
            Path(args.rows_json).write_text(json.dumps(all_rows, indent=1))


def write_section(path: Path, name: str, text: str) -> None:
    """Put the section of experiment `name` into the results file, replacing an earlier one."""
    sections = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            sections[chunk.split("\n", 1)[0]] = "## " + chunk.rstrip() + "\n"
    sections[name] = text
    header = [
        "# SCAN results", "",
        "Exact-match sequence accuracy of greedy generation (mean ± std over seeds) of a small BART (3+3 layers,",
        "d_model 128) pretrained from scratch on each training set, then wrapped (zero-shot) and fine-tuned through",
        "the wrapper. \"inner passes\" is the number of inner forward rows per example (before deduplication);",
        "times are seconds per seed on the device each section names (CPU: one thread per experiment, two",
        "experiments at a time on a 2-core machine).",
        "Where a test set is sampled, `max_eval_examples` says how many examples of each.",
        "A reproduce command writes its experiment's section into this file unless given `--out FILE`, replacing",
        "the whole section, hand-written subsections included: pass `--out` to compare with them.", "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = [sections[n] for n in EXPERIMENTS if n in sections]
    path.write_text("\n".join(header) + "\n" + "\n".join(ordered))


if __name__ == "__main__":
    main()
