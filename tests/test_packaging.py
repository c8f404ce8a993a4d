"""Packaging: the core library runs on its `dependencies` alone; experiments live behind extras.

`import hf_equivariant` must not load the experiments' packages (matplotlib, vaderSentiment, datasets), and
an interpreter that sees only the distributions that `pip install hf-equivariant` (no extras) would install
must support make_equivariant, generate, save/load and Trainer. That interpreter is simulated: a folder of
links to exactly those distributions' files (their requirements followed recursively, with the extras
they name), on the path of `python -S` (no site-packages).
"""

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_ONLY = ("matplotlib", "vaderSentiment", "datasets", "gguf", "sklearn", "peft")


def run_python(code: str, env: dict | None = None, flags=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_import_loads_no_experiment_package():
    result = run_python(f"""
        import sys
        import hf_equivariant
        print(sorted(m for m in {EXPERIMENT_ONLY!r} if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def core_distributions() -> set[str]:
    """Names of the distributions that `pip install hf-equivariant` installs: `dependencies`, recursively."""
    pending = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = importlib.metadata.distribution(requirement.name).metadata["Name"]
        key = (name.lower().replace("_", "-"), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(e) for e in environments):
                pending.append(dependency)
    return {name for name, _ in seen}


def core_only_path(folder: Path) -> Path:
    """A folder of links to the top-level files of the core distributions (packages, modules, .dist-info)."""
    folder.mkdir()
    for name in core_distributions():
        distribution = importlib.metadata.distribution(name)
        site = Path(distribution.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in distribution.files or []}:
            if not (folder / top).exists() and (site / top).exists() and not top.startswith(".."):
                (folder / top).symlink_to(site / top)
    return folder


def test_core_dependencies_alone_support_wrapping_generation_saving_and_training(tmp_path):
    path = core_only_path(tmp_path / "site")
    assert not (path / "datasets").exists() and (path / "transformers").exists() and (path / "accelerate").exists()
    result = run_python(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(path)!r}]
        import torch
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast,
                                  Trainer, TrainingArguments)
        import hf_equivariant
        from hf_equivariant import WordSwapGroup, check_equivariance, make_equivariant

        for name in {EXPERIMENT_ONLY!r}:
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(f"{{name}} is importable: the simulation of a core-only install leaks")
        words = "<pad> <unk> the man woman he she worked as a doctor nurse .".split()
        backend = Tokenizer(models.WordLevel({{w: i for i, w in enumerate(words)}}, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                            padding_side="left")
        torch.manual_seed(0)
        base = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_embd=32, n_layer=1, n_head=2, n_positions=32,
                                          bos_token_id=None, eos_token_id=None)).eval()
        model = make_equivariant(base, [WordSwapGroup("gender", [["man", "he"], ["woman", "she"]])], tokenizer).eval()
        inputs = tokenizer(["the man worked as a", "she worked as"], return_tensors="pt", padding=True)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert generated.shape == (2, inputs["input_ids"].shape[1] + 3)
        check_equivariance(model, dict(inputs))
        model.save_pretrained("{tmp_path / 'saved'}")
        loaded = AutoModelForCausalLM.from_pretrained("{tmp_path / 'saved'}")
        assert torch.allclose(loaded.eval()(**inputs).logits, model(**inputs).logits, atol=1e-5)
        ids = tokenizer("the man worked as a doctor .")["input_ids"]
        rows = [{{"input_ids": ids, "labels": ids}}] * 4
        args = TrainingArguments("{tmp_path / 'train'}", max_steps=2, per_device_train_batch_size=2,
                                 report_to=[], save_strategy="no", use_cpu=True)
        Trainer(model=model, args=args, train_dataset=rows).train()
        check_equivariance(model, dict(inputs))
        print("ok", sorted(m for m in {EXPERIMENT_ONLY!r} if m in sys.modules))
    """, env={"PYTHONNOUSERSITE": "1"}, flags=("-S",))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == "ok []"
