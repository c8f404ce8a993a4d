"""The SCAN experiment of the paper, with `Seq2SeqTrainer`: pretrain, symmetrise, fine-tune, evaluate.

For each seed: (a) pretrain a small BART from scratch on the split's training set, (b) evaluate it,
(c) wrap it with each method compared and each variant and evaluate zero-shot, (d) fine-tune through each
wrapper for a short schedule and evaluate again. The metric is exact-match sequence accuracy of greedy
generation on each test set; wall time and inner forward passes per example are recorded too.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
import warnings

import torch
from datasets import Dataset
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from .. import presets
from ..methods import SYMMETRIZATIONS
from ..wrap import make_equivariant
from .data.scan import load_scan, load_scan_ii, scan_tokenizer

MAX_ACTIONS = 49  # the longest SCAN action sequence (48) plus </s>


@dataclasses.dataclass
class ScanExperiment:
    """One experiment: a split (a SCAN split name or "scan_ii"), the groups (names of `presets.BY_NAME`) and the
    schedule. With `progress`, stage labels go to stderr and the trainers show progress bars."""

    split: str = "addprim_jump"
    groups: tuple[str, ...] = ("scan_verbs",)
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_epochs: float = 10.0
    finetune_epochs: float = 1.0  # 0: zero-shot evaluation only
    learning_rate: float = 5e-4
    finetune_learning_rate: float = 2e-4
    batch_size: int = 64
    eval_batch_size: int = 256
    max_train_examples: int | None = None  # a seeded sample of the training set (for smoke runs)
    max_eval_examples: int | None = None  # a seeded sample of each test set, None for all of it
    d_model: int = 128
    progress: bool = True
    num_layers: int = 3
    symmetrizations: tuple[str, ...] | None = None  # registered method names to compare; None for all, () for none
    # more wrappings of the same pretrained model: (label, method, groups) with groups as presets or WordSwapGroups,
    # e.g. the factors with another class first (the class the multi design canonicalises the other factors to)
    variants: tuple[tuple[str, str, tuple], ...] = ()


def load_splits(split: str, seed: int = 0):
    """(train, {test name: test set}) of a SCAN split or of SCAN-II ("scan_ii")."""
    data = load_scan_ii(seed=seed) if split == "scan_ii" else load_scan(split, seed=seed)
    return data["train"], {name: ds for name, ds in data.items() if name != "train"}


def sample(dataset, size: int | None, seed: int):
    """A seeded random sample of `size` rows (all rows if size is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(size))


def small_bart(tokenizer, d_model: int = 128, num_layers: int = 3) -> BartForConditionalGeneration:
    """A small BART from scratch (learned absolute positions: a small T5 did not learn to stop on SCAN)."""
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=num_layers, decoder_layers=num_layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_position_embeddings=64, dropout=0.1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = BartForConditionalGeneration(config)
    model.generation_config.forced_eos_token_id = None  # BART's default would force another token id
    model.generation_config.max_length = MAX_ACTIONS + 1  # counting the decoder start token
    return model


def tokenized(dataset, tokenizer):
    return dataset.map(
        lambda batch: tokenizer(batch["commands"], text_target=batch["actions"]),
        batched=True, remove_columns=dataset.column_names,
    )


def trainer_for(model, tokenizer, train_set, epochs: float, learning_rate: float, config: ScanExperiment, seed: int,
                output_dir: str) -> Seq2SeqTrainer:
    args = Seq2SeqTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size, num_train_epochs=epochs, learning_rate=learning_rate,
        warmup_steps=0.05, lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=1.0, seed=seed,
        save_strategy="no", disable_tqdm=not config.progress,
        report_to=[], predict_with_generate=True, logging_steps=50,
    )
    return Seq2SeqTrainer(
        model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    )


def exact_match(trainer: Seq2SeqTrainer, tests: dict[str, Dataset], tokenizer) -> dict[str, float]:
    """Share of each test set's examples whose greedy generation equals the target actions.

    Each distinct command is generated once, however many test sets hold it (SCAN-II's union test set holds the
    other three), and the commands go in order of target length, so that a batch of short targets stops early.
    Greedy generation reads each row alone, so neither changes a prediction (up to the floating-point effects of
    batch composition)."""
    distinct = {}
    for test_set in tests.values():
        for row in test_set:
            distinct.setdefault(tuple(row["input_ids"]), row)
    rows = sorted(distinct.values(), key=lambda row: len(row["labels"]))
    output = trainer.predict(Dataset.from_list(rows), num_beams=1, do_sample=False)
    predictions = tokenizer.batch_decode(torch.as_tensor(output.predictions).clamp(min=0), skip_special_tokens=True)
    targets = tokenizer.batch_decode([row["labels"] for row in rows], skip_special_tokens=True)
    # a command's target is a function of the command: one verdict per distinct command serves every test set
    correct = {tuple(row["input_ids"]): text.split() == target.split()
               for row, text, target in zip(rows, predictions, targets)}
    return {name: sum(correct[tuple(ids)] for ids in test_set["input_ids"]) / len(test_set)
            for name, test_set in tests.items()}


def run_seed(config: ScanExperiment, seed: int) -> list[dict]:
    """All stages for one seed; one row per (stage, model) with accuracy per test set, time and passes."""
    tokenizer = scan_tokenizer()
    train, tests = load_splits(config.split, seed)
    train = tokenized(sample(train, config.max_train_examples, seed), tokenizer)
    tests = {name: tokenized(sample(ds, config.max_eval_examples, seed), tokenizer) for name, ds in tests.items()}
    groups = [presets.BY_NAME[name] for name in config.groups]
    rows = []

    def evaluate(stage, model, trainer, seconds):
        start = time.perf_counter()
        accuracy = exact_match(trainer, tests, tokenizer)
        passes = getattr(model, "inner_passes", 1)  # per input: 1 for the plain model and canonicalize
        rows.append({"seed": seed, "stage": stage, "passes": passes, "train_seconds": seconds,
                     "eval_seconds": time.perf_counter() - start, **accuracy})

    def stage(label):
        if config.progress:
            print(f"[seed {seed}: {label}]", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as output_dir:
        set_seed(seed)
        base = small_bart(tokenizer, config.d_model, config.num_layers)
        trainer = trainer_for(base, tokenizer, train, config.pretrain_epochs, config.learning_rate, config, seed,
                              output_dir)
        start = time.perf_counter()
        stage("pretraining")
        trainer.train()
        stage("pretrained: evaluating")
        evaluate("pretrained", base, trainer, time.perf_counter() - start)
        pretrained_state = {k: v.clone() for k, v in base.state_dict().items()}
        names = list(SYMMETRIZATIONS) if config.symmetrizations is None else config.symmetrizations
        methods = [(name, name, groups) for name in names]
        for label, method, method_groups in methods + list(config.variants):
            base.load_state_dict(pretrained_state)
            model = make_equivariant(base, method_groups, tokenizer, symmetrization=method)
            trainer = trainer_for(model, tokenizer, train, config.finetune_epochs, config.finetune_learning_rate,
                                  config, seed, output_dir)
            stage(f"{label}: zero-shot evaluation")
            evaluate(f"{label} zero-shot", model, trainer, 0.0)
            if not config.finetune_epochs:
                continue
            start = time.perf_counter()
            stage(f"{label}: fine-tuning")
            trainer.train()
            stage(f"{label}: evaluating the fine-tuned model")
            evaluate(f"{label} fine-tuned", model, trainer, time.perf_counter() - start)
    return rows


def run(config: ScanExperiment) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return [row for seed in config.seeds for row in run_seed(config, seed)]


def results_table(rows: list[dict]) -> str:
    """Markdown: mean and std over seeds of each stage's accuracy per test set, with passes and times."""
    tests = [k for k in rows[0] if k not in ("seed", "stage", "passes", "train_seconds", "eval_seconds")]
    lines = [
        "| model | inner passes | " + " | ".join(f"{t} exact match (%)" for t in tests) + " | train s | eval s |",
        "| --- | ---: | " + " | ".join("---:" for _ in tests) + " | ---: | ---: |",
    ]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        group = [r for r in rows if r["stage"] == stage]

        def mean_std(key, scale=1.0):
            values = [r[key] * scale for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.1f} ± {spread:.1f}"

        cells = [mean_std(t, 100) for t in tests]
        lines.append(f"| {stage} | {group[0]['passes']} | " + " | ".join(cells)
                     + f" | {statistics.mean(r['train_seconds'] for r in group):.0f}"
                     + f" | {statistics.mean(r['eval_seconds'] for r in group):.0f} |")
    return "\n".join(lines)
