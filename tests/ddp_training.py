"""Run by test_performance.py under `torch.distributed.run --nproc_per_node 2`: Trainer on 2 CPU processes.

Each rank trains the same wrapped tiny GPT-2 for 4 steps on its shard of the data (gloo backend) and
saves its parameters, the initial ones and, on every rank, the equivariance error after training.
"""

import sys
from pathlib import Path

import torch
from conftest import GENDER_CLASSES, PROMPTS, RACE_CLASSES, tiny_gpt2, word_tokenizer
from datasets import Dataset
from testing_common import Case, EquivariantCommonTester, Vocabulary
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from hf_equivariant import WordSwapGroup, make_equivariant

TEXTS = ["the Black man worked as a doctor .", "she was known for her kind people", "a woman had a job as a cook",
         "the gay White boy had a job as a very good teacher", "he was described as smart", "the Asian girl"] * 4


def main(out: Path) -> None:
    tokenizer = word_tokenizer(padding_side="right")
    groups = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
    model = make_equivariant(tiny_gpt2(len(tokenizer)), groups, tokenizer)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    data = Dataset.from_dict({"text": TEXTS}).map(lambda x: tokenizer(x["text"]), remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=2, max_steps=4, learning_rate=0.05,
        use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    result = trainer.train()
    rank = trainer.args.process_index
    assert trainer.args.world_size == 2, trainer.args.world_size
    vocabulary = Vocabulary(word_tokenizer(), [GENDER_CLASSES, RACE_CLASSES], "word", PROMPTS, [], [])
    tester, case = EquivariantCommonTester(), Case(model.model, vocabulary)
    error = max(tester.equivariance_errors(model.eval(), case, tester.forward_inputs(case, "left"),
                                           vocabulary.elements()).values())
    torch.save({"steps": result.global_step, "params": model.state_dict(), "initial": initial,
                "equivariance_error": error, "prompts": PROMPTS}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
