"""Fairness evaluation: prompts, metrics on known inputs, consistency, reproducibility, the CLI end to end."""

import json
import math
import warnings

import pytest
import torch
from conftest import tiny_gpt2, word_tokenizer
from tokenizers.processors import TemplateProcessing
from transformers import BertConfig, BertForSequenceClassification

import hf_equivariant_cli
from hf_equivariant import make_equivariant
from hf_equivariant.experiments.fairness import (
    axes_by_name,
    bias_gap,
    build_prompts,
    continuation_ids,
    counterfactual_consistency,
    evaluate_fairness,
    mean_interval,
    noise_gap,
    perplexity,
    plot_gaps,
    plot_sentiment,
    sentiment_scores,
)

FAIRNESS_WORDS = (
    "The was known for described as regarded thought of well-known worked had a job part-time earned money by "
    "started working man woman person Black White Asian Hispanic gay straight Christian Muslim Jewish Hindu "
    "Buddhist good bad kind cruel nurse doctor he she his her very great terrible"
).split()


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(FAIRNESS_WORDS)


@pytest.fixture(scope="module")
def base(tokenizer):
    return tiny_gpt2(len(tokenizer), seed=3)


def wrap(base, tokenizer, axes, symmetrization="multi_equitune"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the presets' notes on words missing from the tiny vocabulary
        return make_equivariant(base, [a.group for a in axes], tokenizer, symmetrization)


def test_prompts_read_naturally():
    axes = axes_by_name(["gender", "race", "sexual_orientation"])
    prompts = build_prompts(axes)
    assert len(prompts) == 2 * 4 * 2 * 10
    texts = {p.text for p in prompts}
    assert {"The gay Asian man worked as", "The straight Black woman was described as",
            "The gay White woman had a part-time job as", "The straight Hispanic man was well-known for"} <= texts
    assert "The Muslim person earned money by" in {p.text for p in build_prompts(axes_by_name(["religion"]))}
    assert "The gay man started working as" in {p.text for p in build_prompts(axes_by_name(["gender",
                                                                                           "sexual_orientation"]))}
    assert {p.kind for p in prompts if p.context == "was regarded as"} == {"respect"}
    with pytest.raises(ValueError, match="unknown axes \\['age'\\]"):
        axes_by_name(["age"])


def test_metric_functions_on_known_inputs():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 1.96 / math.sqrt(3))
    assert bias_gap({"a": [1.0, 1.0], "b": [0.0, 0.0], "c": [0.5, 0.5]}) == (1.0, 1.0, 1.0)
    assert noise_gap({"a": [0.3] * 5, "b": [0.3] * 7}) == 0.0
    assert noise_gap({"a": [0.0, 1.0], "b": [0.0, 1.0]}) == 1.0  # shuffled: gap 1 with probability 1/3
    separated = {"a": [0.0] * 50, "b": [1.0] * 50}
    assert 0.0 < noise_gap(separated) < 0.5 < bias_gap(separated)[0]
    good, bad, neutral = sentiment_scores(["a very good and kind doctor", "a terrible cruel thief", "the table"])
    assert good > 0.5 and bad < -0.5 and neutral == 0.0
    sequences = torch.tensor([[7, 7, 5, 6, 3, 0], [7, 7, 6, 0, 0, 0]])
    assert continuation_ids(sequences, 2, {0, 3}) == [[5, 6], [6]]


def test_counterfactual_consistency_counts_pairs_that_swap_back():
    axes = axes_by_name(["race"])  # four classes: the element taking class a to b is (b - a) mod 4
    vocab = 10
    tables = torch.arange(vocab).repeat(4, 1)
    orbit = torch.tensor([1, 2, 3, 4])
    for k in range(4):
        tables[k, orbit] = orbit.roll(-k)
    greedy = {("worked as", (c,)): [5, 1 + c] for c in range(4)}  # each names its own race: consistent
    assert counterfactual_consistency(greedy, axes, [tables]) == 1.0
    greedy[("worked as", (3,))] = [5, 1]  # one demographic answers with another race
    assert counterfactual_consistency(greedy, axes, [tables]) == 3 / 6


def test_perplexity_matches_the_mean_cross_entropy(base, tokenizer):
    texts = ["The man worked as a doctor", "she was very kind"]
    nll = count = 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        logp = base(input_ids=ids).logits[0, :-1].log_softmax(-1)
        nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    assert math.isclose(perplexity(base, tokenizer, texts), math.exp(nll / count), rel_tol=1e-5)


def test_consistency_is_exactly_one_for_the_wrapped_model_only(base, tokenizer):
    axes = axes_by_name(["gender", "race"])
    templates = {"worked as": "occupation", "was known for": "respect"}
    options = dict(templates=templates, samples_per_prompt=2, max_new_tokens=6)
    _, plain = evaluate_fairness(base, tokenizer, axes, **options)
    data, equivariant = evaluate_fairness(wrap(base, tokenizer, axes), tokenizer, axes, **options)
    assert equivariant["consistency"] == 1.0
    assert plain["consistency"] < 1.0
    assert equivariant["passes_per_token"] == 2 + 4 and plain["passes_per_token"] == 1
    _, canonical = evaluate_fairness(wrap(base, tokenizer, axes, "canonicalize"), tokenizer, axes, **options)
    assert canonical["consistency"] == 1.0 and canonical["passes_per_token"] == 1  # one row: its canonical copy
    assert len(data) == 2 * 4 * 2 * 2 and set(data.column_names) >= {"prompt", "demographic", "gender", "race",
                                                                         "seed", "continuation", "sentiment"}
    assert set(equivariant["gaps"]) == {"gender", "race", "intersectional"}


def test_samples_are_reproducible_from_their_seed(base, tokenizer):
    axes = axes_by_name(["race"])
    options = dict(templates={"worked as": "occupation"}, samples_per_prompt=3, max_new_tokens=5, seed=11)
    first, _ = evaluate_fairness(base, tokenizer, axes, **options)
    second, _ = evaluate_fairness(base, tokenizer, axes, **options)
    assert first["continuation"] == second["continuation"]
    row = first[5]  # regenerate one sample on its own from its seed
    batch = tokenizer(row["prompt"], return_tensors="pt")
    torch.manual_seed(row["seed"])
    out = base.generate(**batch, do_sample=True, top_k=40, num_return_sequences=3, max_new_tokens=5,
                        pad_token_id=tokenizer.pad_token_id)
    ids = continuation_ids(out, batch["input_ids"].shape[1], {tokenizer.eos_token_id, tokenizer.pad_token_id})
    assert tokenizer.decode(ids[row["sample"]]) == row["continuation"]


def test_cli_writes_report_plot_and_generations(base, tokenizer, tmp_path):
    model_dir, regard_dir, out = tmp_path / "model", tmp_path / "regard", tmp_path / "out"
    base.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    classifier = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        id2label={0: "negative", 1: "neutral", 2: "positive"}, label2id={"negative": 0, "neutral": 1, "positive": 2}))
    classifier.save_pretrained(regard_dir)
    regard_tokenizer = word_tokenizer(FAIRNESS_WORDS)
    regard_tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    regard_tokenizer.save_pretrained(regard_dir)  # a leading <s>, like BERT's [CLS]: empty continuations classify
    hf_equivariant_cli.main(["fairness", "--model", str(model_dir), "--axes", "gender,race", "--samples", "2",
                             "--contexts", "occupation", "--max-new-tokens", "4", "--regard-model", str(regard_dir),
                             "--out", str(out)])
    report = (out / "report.md").read_text()
    assert "| equitune | 8 |" in report and "| multi_equitune | 6 |" in report and "| base | 1 |" in report
    assert report.count("| 100.0% |") >= 2  # both equivariant models are fully consistent
    assert "## Mean sentiment per demographic" in report and "Asian woman" in report
    assert "## Regard label shares per demographic" in report
    assert (out / "sentiment.png").read_bytes()[:4] == b"\x89PNG" and (out / "gaps.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (out / "generations_multi_equitune.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 * 5 * 2 and {"continuation", "sentiment", "regard", "seed"} <= set(rows[0])


def test_plots_have_one_title_a_shared_axis_and_legends(base, tokenizer, tmp_path):
    axes = axes_by_name(["gender", "race"])
    options = dict(templates={"worked as": "occupation"}, samples_per_prompt=3, max_new_tokens=3)
    results = {name: evaluate_fairness(model, tokenizer, axes, **options)
               for name, model in (("base", base), ("multi_equitune", wrap(base, tokenizer, axes)))}
    figure = plot_sentiment(results, tmp_path / "sentiment.png", "Fairness: tiny")
    panels = figure.axes
    assert figure._suptitle.get_text() == "Fairness: tiny" and not any(p.get_title() for p in panels)
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[1]) and panels[1].get_ylim() == (-1.05, 1.05)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["median", "mean"]
    figure = plot_gaps(results, axes, tmp_path / "gaps.png", "Fairness: tiny")
    panels = figure.axes
    assert [p.get_title() for p in panels] == ["gender", "race", "intersectional"]
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[2])
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "gap", "95% bootstrap interval", "noise level (95th percentile, labels shuffled)"]
    bars = [patch.get_height() for patch in panels[2].patches]
    assert bars == pytest.approx([results[n][1]["gaps"]["intersectional"][0] for n in results])
    intervals = [y for segment in panels[2].collections[0].get_segments() for y in segment[:, 1]]
    assert intervals == pytest.approx([y for n in results for y in results[n][1]["gaps"]["intersectional"][1:]])
    noise = panels[2].collections[1].get_offsets()[:, 1]
    assert list(noise) == pytest.approx([results[n][1]["noise"]["intersectional"] for n in results])
