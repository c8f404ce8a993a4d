"""A word-level tokenizer for the captions of image-text experiments (tiny CLIP and SigLIP models from configs)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0-3


def caption_tokenizer(words) -> PreTrainedTokenizerFast:
    """Word-level over `words` (ids 4, 5, ... in the order given, after SPECIAL_TOKENS), splitting on whitespace and
    punctuation; every text ends with </s>, where CLIP's text tower pools."""
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>", model_max_length=16)
