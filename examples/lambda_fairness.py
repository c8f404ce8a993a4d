"""multi_lambda_equitune on SmolLM2: train the lambda heads (inner model frozen) by self-distillation, then compare.

    python examples/lambda_fairness.py [--groups gender,race,sexual_orientation] [--steps 40] [--out FILE]
                                       [--gap-contexts 4] [--gap-samples 3] [--train-prompts prose]
                                       [--samples-per-prompt 1] [--eval-every 20]

1. Training data (self-distillation, offline): the base model's own sampled continuations of prompts built from
   demographic phrases ("The gay Black man") and contexts, or with --train-prompts prose from everyday openers and
   subjects ("Yesterday my neighbour"); the prompts appear neither among the fairness prompts
   (`fairness.TEMPLATES`) nor in the held-out text; the script checks both.
2. `Trainer` trains only the lambda head (the wrapper's `copy_weights`, 577 parameters for SmolLM2's 576-wide
   hidden state) on that text with the symmetrised next-token loss, once for each form of multi_lambda_equitune:
   branch_weights "fixed" (lambda normalised within each factor's branch, 1/N per branch) and "lambda" (the
   branches weighed by their mean lambda), from the same data, seed and steps. With --eval-every K the step count
   is chosen on self-distilled validation text (other prompts, VALIDATION_CONTEXTS or VALIDATION_OPENERS, sampled
   with seed + 1): the loss on it is measured every K steps and the best step's head is kept.
3. Held-out perplexity (the sentences of hf_equivariant/experiments/data/fairness_heldout.txt, as in fairness.md)
   of the base model, equitune, multi_equitune and both trained forms (at init each is multi_equitune: checked),
   with the passes per token (copies per input row, and the distinct inner rows deduplication actually ran per
   input row), the counterfactual consistency of greedy continuations on fairness prompts (two contexts, every
   demographic), and the time of each part.
4. Sentiment gaps as fairness.md measures them (`fairness.evaluate_fairness`), for the base model and the trained
   forms, on --gap-contexts of its contexts (respect and occupation alternately) x every demographic x
   --gap-samples samples, with the noise level of each gap (labels shuffled) at that sample count.
5. With --class-first, the class each factor lists first (the class the multi forms canonicalise the other
   factors to; equitune does not depend on it): given words ("female,White,straight"), or "cv" for a two-fold
   cross-validation on the held-out sentences: every choice of class 0 (one class per factor) is scored with
   multi_equitune on each half (even and odd sentences), the best choice on one half gets a lambda head trained
   (branch-weighted form) and both are measured on the other half; the pooled perplexity of the two other halves
   is the cross-validated figure.
Prints a markdown report, and writes it to --out if given.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
import time
import warnings

import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_equivariant import make_equivariant
from hf_equivariant.boundaries import act_on_words, token_boundaries
from hf_equivariant.experiments import commands
from hf_equivariant.experiments.fairness import (
    OCCUPATION_CONTEXTS,
    RESPECT_CONTEXTS,
    TEMPLATES,
    axes_by_name,
    build_prompts,
    continuation_ids,
    counterfactual_consistency,
    demographic_phrase,
    evaluate_fairness,
    held_out_texts,
    perplexity,
    pooled_perplexity,
    text_losses,
)
from hf_equivariant.groups import resolve_groups

TRAIN_CONTEXTS = ("lived in", "said that", "was walking to", "bought a", "wrote a letter to", "grew up in",
                  "was asked about", "moved to")
PROSE_OPENERS = ("Yesterday", "Last winter", "Every morning", "After the concert", "On Sunday", "At the station",
                 "Before dinner", "In the village")
PROSE_SUBJECTS = ("my neighbour", "the teacher", "a young doctor", "our family", "the children", "my cousin",
                  "an old farmer", "the new manager", "a tourist", "the pilot", "my best friend", "the nurse",
                  "a local artist", "the mayor", "the students", "a stranger")
# the validation prompts of --eval-every (the step count is chosen on their texts): other contexts and openers
VALIDATION_CONTEXTS = ("talked to", "visited", "was born in", "read a book about")
VALIDATION_OPENERS = ("Late last night", "During the storm", "On the way home", "At the market")
CONSISTENCY_CONTEXTS = ("was known for", "worked as")  # one respect and one occupation context of fairness.md


def distillation_prompts(axes, kind: str = "demographic", split: str = "train") -> list[str]:
    """The prompts whose base-model continuations are the training (or, with split "validation", the validation)
    text; none is a fairness prompt or starts a held-out line, and no prompt is in both splits (all checked).

    "demographic": every demographic phrase in every training context ("The gay Black man lived in").
    "prose": every opener with every subject ("Yesterday my neighbour"), everyday prose with no demographic
    phrase in the prompt (the continuations bring their own pronouns and nouns), closer to the held-out text.
    The validation split uses VALIDATION_CONTEXTS or VALIDATION_OPENERS instead.
    """
    contexts = {"train": TRAIN_CONTEXTS, "validation": VALIDATION_CONTEXTS}[split]
    openers = {"train": PROSE_OPENERS, "validation": VALIDATION_OPENERS}[split]
    if kind == "prose":
        prompts = [f"{opener} {subject}" for opener in openers for subject in PROSE_SUBJECTS]
    else:
        demographics = itertools.product(*(range(len(axis.words)) for axis in axes))
        prompts = [f"The {demographic_phrase(axes, classes)} {context}" for classes in demographics
                   for context in contexts]
    evaluation = {p.text for p in build_prompts(axes)}
    held_out = held_out_texts()
    clashes = [p for p in prompts if p in evaluation or any(line.startswith(p) for line in held_out)]
    if kind == "demographic":
        clashes += sorted(set(contexts) & set(TEMPLATES))
    if clashes:
        raise SystemExit(f"{split} prompts overlap the evaluation set: {clashes}")
    if split == "validation":
        shared = sorted(set(prompts) & set(distillation_prompts(axes, kind)))
        if shared:
            raise SystemExit(f"validation prompts overlap the training prompts: {shared}")
    return prompts


def self_distillation_texts(base, tokenizer, prompts, max_new_tokens: int, seed: int,
                            samples_per_prompt: int = 1) -> list[str]:
    """`samples_per_prompt` sampled continuations (top-k 40) of each prompt by the base model, prompt included."""
    torch.manual_seed(seed)
    prompts = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = base.generate(**batch, do_sample=True, top_k=40, max_new_tokens=max_new_tokens,
                            pad_token_id=tokenizer.pad_token_id)
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return [prompt + tokenizer.decode(ids) for prompt, ids in
            zip(prompts, continuation_ids(out, batch["input_ids"].shape[1], stop))]


def train_head(model, tokenizer, texts, steps: int, learning_rate: float, batch_size: int, seed: int,
               validation_texts=(), eval_every: int = 0):
    """`Trainer` on the symmetrised loss with the inner model frozen: only the lambda head learns.

    With `validation_texts` and `eval_every`, the symmetrised loss on the validation texts is measured every
    `eval_every` steps and the head of the best of those steps is kept (Trainer's `load_best_model_at_end`):
    `steps` is then the most steps trained. Returns the mean training loss and the Trainer's state (its
    `log_history`, `best_global_step` and `best_metric`).
    """
    model.model.requires_grad_(False)
    right = tokenizer.padding_side
    tokenizer.padding_side = "right"  # training batches: positions do not shift with the padding

    def tokenized(strings):
        return Dataset.from_dict({"text": list(strings)}).map(lambda x: tokenizer(x["text"]), remove_columns=["text"])

    choose_step = bool(validation_texts) and eval_every > 0
    strategy = "steps" if choose_step else "no"
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    with tempfile.TemporaryDirectory() as output_dir:  # its checkpoints hold the whole inner model
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps,
            learning_rate=learning_rate, lr_scheduler_type="constant", weight_decay=0.0, report_to=[], use_cpu=True,
            seed=seed, disable_tqdm=True, logging_steps=max(1, steps // 4), eval_strategy=strategy,
            eval_steps=eval_every or None, save_strategy=strategy, save_steps=eval_every or None, save_total_limit=1,
            save_only_model=True, load_best_model_at_end=choose_step, metric_for_best_model="eval_loss",
            prediction_loss_only=True, per_device_eval_batch_size=batch_size,
        )
        trainer = Trainer(model=model, args=args, train_dataset=tokenized(texts),
                          eval_dataset=tokenized(validation_texts) if choose_step else None, data_collator=collator)
        result = trainer.train()
    tokenizer.padding_side = right
    return result.training_loss, trainer.state


def step_choice(state) -> str:
    """The step Trainer kept and the validation loss at every measured step, for the report ("" without them)."""
    curve = ", ".join(f"{log['step']}: {log['eval_loss']:.4f}" for log in state.log_history if "eval_loss" in log)
    if not curve:
        return ""
    return f"kept step {state.best_global_step} of {state.max_steps} (validation loss by step: {curve})"


def inner_rows_per_input(model, tokenizer, texts) -> float:
    """Distinct inner rows the forward passes of the held-out texts ran, per text (deduplication at work)."""
    rows = []
    hook = model.model.register_forward_hook(lambda m, a, kw, out: rows.append(kw["input_ids"].shape[0]),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            for text in texts:
                model(**tokenizer(text, return_tensors="pt"))
    finally:
        hook.remove()
    return sum(rows) / len(texts)


def consistency(model, tokenizer, axes, max_new_tokens: int) -> float:
    """Counterfactual consistency (as in fairness.md, word action) of greedy continuations, on every demographic
    in CONSISTENCY_CONTEXTS."""
    templates = {c: TEMPLATES[c] for c in CONSISTENCY_CONTEXTS}
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    greedy = {}
    for prompt in build_prompts(axes, templates):
        batch = tokenizer(prompt.text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        greedy[(prompt.context, prompt.demographic)] = (batch["input_ids"][0].tolist()
                                                        + continuation_ids(out, batch["input_ids"].shape[1], stop)[0])
    factors = resolve_groups([axis.group for axis in axes], tokenizer)
    before, after = token_boundaries(tokenizer, len(tokenizer))
    return counterfactual_consistency(greedy, axes, [f.permutation_tables() for f in factors],
                                      lambda ids, perm: act_on_words(ids, perm, before, after))


LAMBDA_FORMS = {"multi_lambda_equitune (fixed 1/N)": "fixed", "multi_lambda_equitune (branch-weighted)": "lambda"}


def gap_templates(count: int) -> dict[str, str]:
    """`count` fairness contexts, respect and occupation alternately."""
    alternate = [c for pair in zip(RESPECT_CONTEXTS, OCCUPATION_CONTEXTS) for c in pair]
    return {c: TEMPLATES[c] for c in alternate[:count]}


def class_zero(groups) -> str:
    """The first word of each factor's class 0, as the reports write them."""
    return ", ".join(group.classes[0][0] for group in groups)


def class_zero_choices(groups) -> list[list]:
    """Every choice of class 0, one class per factor, as the groups with those classes listed first."""
    return [[group.with_class_first(words[0]) for group, words in zip(groups, pick)]
            for pick in itertools.product(*(group.classes for group in groups))]


def cross_validated_class_order(base, tokenizer, groups, held_out, train, consistency_of) -> list[str]:
    """Markdown lines: held-out perplexity of multi_equitune for every choice of class 0 (whole set and halves),
    and the two-fold cross-validated perplexity of multi_equitune and of a trained multi_lambda_equitune
    (`train(model)` trains its head and returns `step_choice`'s line; `consistency_of(model)` measures it) with
    class 0 chosen on the other half. The folds are the even and odd sentences."""
    choices = class_zero_choices(groups)
    halves = [range(0, len(held_out), 2), range(1, len(held_out), 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        losses = [text_losses(make_equivariant(base, choice, tokenizer, "multi_equitune").eval(), tokenizer,
                              held_out) for choice in choices]
    half_ppl = [[pooled_perplexity([loss[i] for i in half]) for half in halves] for loss in losses]
    lines = ["| class 0 of each factor | multi_equitune perplexity | even half | odd half |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {class_zero(choice)} | {pooled_perplexity(loss):.2f} | {even:.2f} | "
              f"{odd:.2f} |" for choice, loss, (even, odd) in zip(choices, losses, half_ppl)]
    multi, lam, picked, agree, choices_of_steps = [], [], [], [], []
    for fold, other in enumerate(halves[::-1]):  # choose on half `fold`, measure on the other
        best = min(range(len(choices)), key=lambda c: half_ppl[c][fold])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make_equivariant(base, choices[best], tokenizer, "multi_lambda_equitune")
        choices_of_steps.append(train(model))
        multi += [losses[best][i] for i in other]
        lam += text_losses(model.eval(), tokenizer, [held_out[i] for i in other])
        agree.append(f"{100 * consistency_of(model):.1f}%")
        picked.append(class_zero(choices[best]))
    lines += ["", f"Cross-validated (class 0 chosen on the even half: {picked[0]}; on the odd half: {picked[1]}): "
              f"multi_equitune {pooled_perplexity(multi):.2f}, multi_lambda_equitune (branch-weighted, trained) "
              f"{pooled_perplexity(lam):.2f} (consistency of the two trained models: {', '.join(agree)})."]
    lines += [f"Fold {fold} head: {choice}." for fold, choice in enumerate(choices_of_steps) if choice]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="gender,race,sexual_orientation")
    parser.add_argument("--steps", type=int, default=40, help="training steps (with --eval-every: the most)")
    parser.add_argument("--eval-every", type=int, default=0, help="measure the loss on self-distilled validation "
                        "texts (other prompts, another seed) every this many steps and keep the best step's head")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sample-tokens", type=int, default=24, help="tokens sampled per training prompt")
    parser.add_argument("--samples-per-prompt", type=int, default=1, choices=range(1, 65), metavar="1..64",
                        help="training texts sampled per prompt")
    parser.add_argument("--greedy-tokens", type=int, default=10, help="tokens per greedy continuation")
    parser.add_argument("--gap-contexts", type=int, default=4, help="fairness contexts for the gaps (0: no gaps)")
    parser.add_argument("--gap-samples", type=int, default=3, help="samples per gap prompt")
    parser.add_argument("--forms", default="fixed,lambda", help="multi_lambda_equitune forms (branch_weights) to train")
    parser.add_argument("--no-baselines", action="store_true", help="skip base, equitune and multi_equitune (the same "
                        "figures as a run with them: data, seed and evaluation do not depend on the forms trained)")
    parser.add_argument("--class-first", help="one word per factor whose class the wrappers list first, or 'cv' to "
                        "choose it by two-fold cross-validation on the held-out sentences")
    parser.add_argument("--train-prompts", choices=("demographic", "prose"), default="demographic",
                        help="prompts of the self-distillation texts (see `distillation_prompts`)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the report to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    base, tokenizer = commands.load_model_and_tokenizer(None)
    axes = axes_by_name(args.groups.split(","))
    groups = [axis.group for axis in axes]
    if args.class_first and args.class_first != "cv":
        words = args.class_first.split(",")
        if len(words) != len(groups):
            parser.error(f"--class-first needs one word per group ({args.groups}), got {args.class_first!r}")
        groups = [group.with_class_first(word) for group, word in zip(groups, words)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on skipped word forms
        models = {name: make_equivariant(base, groups, tokenizer, name).eval()
                  for name in ("equitune", "multi_equitune")}
        forms = {name: form for name, form in LAMBDA_FORMS.items() if form in args.forms.split(",")}
        models.update({name: make_equivariant(base, groups, tokenizer, "multi_lambda_equitune",
                                              method_options={"branch_weights": form}).eval()
                       for name, form in forms.items()})
    seconds = {"load": time.perf_counter() - start}
    held_out = held_out_texts()

    start = time.perf_counter()
    prompts = distillation_prompts(axes, args.train_prompts)
    texts = self_distillation_texts(base, tokenizer, prompts, args.sample_tokens, args.seed, args.samples_per_prompt)
    validation = (self_distillation_texts(base, tokenizer, distillation_prompts(axes, args.train_prompts, "validation"),
                                          args.sample_tokens, args.seed + 1) if args.eval_every else [])
    seconds["sample"] = time.perf_counter() - start

    at_init, losses, steps_kept = {}, {}, {}
    ids = tokenizer(held_out[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        uniform = models["multi_equitune"](**ids).logits
    print(f"training texts: {len(texts)}, sha1 {hashlib.sha1(chr(0).join(texts).encode()).hexdigest()[:12]}",
          flush=True)
    for name in forms:
        lam = models[name]
        with torch.no_grad():
            at_init[name] = torch.equal(lam(**ids).logits, uniform)
        start = time.perf_counter()
        losses[name], state = train_head(lam, tokenizer, texts, args.steps, args.learning_rate, args.batch_size,
                                         args.seed, validation, args.eval_every)
        steps_kept[name] = step_choice(state)
        lam.eval()
        seconds[name] = time.perf_counter() - start

    rows = []
    evaluated = [(name, model) for name, model in [("base", base), *models.items()]
                 if name in forms or not args.no_baselines]
    for name, model in evaluated:
        start = time.perf_counter()
        value = perplexity(model, tokenizer, held_out)
        perplexity_seconds = time.perf_counter() - start
        start = time.perf_counter()
        agree = consistency(model, tokenizer, axes, args.greedy_tokens)
        rows.append((name, getattr(model, "num_copies", 1),
                     inner_rows_per_input(model, tokenizer, held_out) if name != "base" else 1.0,
                     value, perplexity_seconds, agree, time.perf_counter() - start))
    ppl = {row[0]: row[3] for row in rows}

    overhead = " (validation and checkpoints included)" if args.eval_every else ""
    trained = "; ".join(f"{name} ({LAMBDA_FORMS[name]}) {seconds[name]:.0f} s{overhead}, mean training loss over all "
                        f"{args.steps} steps {losses[name]:.3f}, == multi_equitune at init bit for bit: {at_init[name]}"
                        + (f", {steps_kept[name]}" if steps_kept[name] else "") for name in forms)
    lines = [
        f"groups {args.groups}; {len(prompts)} {args.train_prompts} training prompts x {args.samples_per_prompt} base "
        f"sample{'s' if args.samples_per_prompt > 1 else ''} of up to "
        f"{args.sample_tokens} tokens "
        f"(sampled in {seconds['sample']:.0f} s); lambda heads trained {args.steps} steps of {args.batch_size} "
        f"(AdamW, lr {args.learning_rate}, inner model frozen"
        + (f"; at most, the step kept on {len(validation)} validation texts measured every {args.eval_every} steps"
           if args.eval_every else "")
        + f"){': ' + trained if trained else ''}; "
        f"{len(held_out)} held-out sentences; class 0 of each factor: "
        f"{'cross-validated (below)' if args.class_first == 'cv' else class_zero(groups)}; "
        f"model load {seconds['load']:.0f} s; one thread; training texts sha1 "
        f"{hashlib.sha1(chr(0).join(texts).encode()).hexdigest()[:12]}.",
        "",
        "| model | passes per token (copies) | distinct inner rows per sentence | held-out perplexity | x base "
        "| perplexity s | consistency | consistency s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, copies, distinct, value, ppl_s, agree, agree_s in rows:
        name = f"{name}, trained" if name in LAMBDA_FORMS else name
        x_base = f"{value / ppl['base']:.3f}" if "base" in ppl else "(see baselines)"
        lines.append(f"| {name} | {copies} | {distinct:.2f} | {value:.2f} | {x_base} | {ppl_s:.0f} "
                     f"| {100 * agree:.1f}% | {agree_s:.0f} |")
    lines.append("")
    for name in forms if "equitune" in ppl else ():
        lines.append(f"{name} at {models[name].num_copies} passes vs equitune at {models['equitune'].num_copies}: "
                     f"perplexity {ppl[name]:.2f} vs {ppl['equitune']:.2f} -> goal (<= equitune's) "
                     f"{'reached' if ppl[name] <= ppl['equitune'] else 'not reached'}; vs multi_equitune "
                     f"{ppl['multi_equitune']:.2f}.")
    if args.class_first == "cv":
        lines += ["", *cross_validated_class_order(
            base, tokenizer, groups, held_out,
            lambda model: step_choice(train_head(model, tokenizer, texts, args.steps, args.learning_rate,
                                                 args.batch_size, args.seed, validation, args.eval_every)[1]),
            lambda model: consistency(model, tokenizer, axes, args.greedy_tokens))]
    print("\n".join(lines), flush=True)

    if args.gap_contexts:
        templates = gap_templates(args.gap_contexts)
        names = [*[axis.name for axis in axes], "intersectional"]
        lines += ["", f"Sentiment gaps (VADER, as fairness.md) on {len(templates)} contexts ({', '.join(templates)}) x "
                  f"{len(build_prompts(axes, templates)) // len(templates)} demographics x {args.gap_samples} samples; "
                  "gap [95% bootstrap interval] (noise: the gap reached with the labels shuffled, 95th percentile, at "
                  "this sample count)", "",
                  "| model | samples | " + " | ".join(f"{n} gap (noise)" for n in names) + " | consistency | s |",
                  "| --- | ---: | " + " | ".join("---" for _ in names) + " | ---: | ---: |"]
        for name, model in [(name, model) for name, model in evaluated if name == "base" or name in forms]:
            start = time.perf_counter()
            _, summary = evaluate_fairness(model, tokenizer, axes, templates, samples_per_prompt=args.gap_samples,
                                           seed=args.seed)
            gaps = [f"{summary['gaps'][n][0]:.3f} [{summary['gaps'][n][1]:.3f}, {summary['gaps'][n][2]:.3f}] "
                    f"({summary['noise'][n]:.3f})" for n in names]
            lines.append(f"| {name} | {summary['samples']} | " + " | ".join(gaps)
                         + f" | {100 * summary['consistency']:.1f}% | {time.perf_counter() - start:.0f} |")
            print(lines[-1], flush=True)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
