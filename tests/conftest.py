"""Shared fixtures: a word-level tokenizer, tiny models of many architectures, and an independent group oracle.

The oracle computes permutations straight from the word lists and the tokenizer's vocabulary, without
the library's tables, so that equivariance is checked against an independent definition.
"""

import functools
import itertools
import os
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BambaConfig,
    BambaForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    BloomConfig,
    BloomForCausalLM,
    FalconH1Config,
    FalconH1ForCausalLM,
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhimoeConfig,
    PhimoeForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_equivariant import WordSwapGroup

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = (
    "the a an of and to was as for by worked known described job had doctor nurse teacher engineer cook "
    "kind cruel smart lazy very quite person people good bad . , "
    "man woman he she his her boy girl Man Woman He She His Her "
    "Black White Asian Hispanic gay straight"
).split()
GENDER_CLASSES = [["man", "he", "his", "boy"], ["woman", "she", "her", "girl"]]
RACE_CLASSES = [["Black"], ["White"], ["Asian"]]
ORIENTATION_CLASSES = [["gay"], ["straight"]]
# Every prompt holds a gender and a race word (see test_scan_pipeline.py on ties).
PROMPTS = ["the Black man worked as a", "the Asian woman was known for her", "the gay White boy had a job as"]


def word_tokenizer(words=WORDS, lowercase: bool = False, padding_side: str = "left") -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIAL + list(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side=padding_side,
    )


@pytest.fixture(scope="session")
def tokenizer():
    return word_tokenizer()


@pytest.fixture
def gender():
    return WordSwapGroup("gender", GENDER_CLASSES)


@pytest.fixture
def race():
    return WordSwapGroup("race", RACE_CLASSES)


@pytest.fixture
def orientation():
    return WordSwapGroup("orientation", ORIENTATION_CLASSES)


# A large initializer_range gives peaked, varied predictions, so that generations contain group words.
def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=2, eos_token_id=3,
        pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.5,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config).eval()


def tiny_t5(vocab_size: int, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, pad_token_id=0,
        eos_token_id=3, decoder_start_token_id=0, dropout_rate=0.0,
    )
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # T5's own initialisation gives one repeated token in generation
        for name, param in model.named_parameters():
            if "layer_norm" not in name:
                param.normal_(0, 0.5)
    return model


def tiny_bart(vocab_size: int, seed: int = 0) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, init_std=0.5, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0,
    )
    return BartForConditionalGeneration(config).eval()


def tiny(config_class, model_class, vocab_size: int, seed: int = 0, **fields):
    """A tiny random model of any architecture: vocab_size, special tokens and a large initializer_range set."""
    torch.manual_seed(seed)
    fields = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0, initializer_range=0.5, **fields)
    return model_class(config_class(vocab_size=vocab_size, **fields)).eval()


ATTENTION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)


def tiny_qwen2(vocab_size: int, seed: int = 0):
    return tiny(Qwen2Config, Qwen2ForCausalLM, vocab_size, seed, **ATTENTION)


def tiny_qwen3(vocab_size: int, seed: int = 0):
    return tiny(Qwen3Config, Qwen3ForCausalLM, vocab_size, seed, head_dim=8, **ATTENTION)


def tiny_gemma2(vocab_size: int, seed: int = 0):  # one sliding-window layer (window 4) and one global layer
    return tiny(Gemma2Config, Gemma2ForCausalLM, vocab_size, seed, head_dim=8, query_pre_attn_scalar=8,
                sliding_window=4, **ATTENTION)


# Longrope with an original context of 12 positions, so that generation crosses it: Phi-3 and PhiMoE then
# restart their cache in prepare_inputs_for_generation.
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [4.0] * 4, "rope_theta": 10000.0,
            "original_max_position_embeddings": 12}


def tiny_phi3(vocab_size: int, seed: int = 0):
    return tiny(Phi3Config, Phi3ForCausalLM, vocab_size, seed, original_max_position_embeddings=12,
                rope_parameters=dict(LONGROPE), **ATTENTION)


def tiny_phimoe(vocab_size: int, seed: int = 0):
    return tiny(PhimoeConfig, PhimoeForCausalLM, vocab_size, seed, num_local_experts=4, router_jitter_noise=0.0,
                rope_parameters=dict(LONGROPE, short_mscale=1.0, long_mscale=1.0), **ATTENTION)


def tiny_bloom(vocab_size: int, seed: int = 0):
    return tiny(BloomConfig, BloomForCausalLM, vocab_size, seed, hidden_size=32, n_layer=2, n_head=4)


def tiny_mamba(vocab_size: int, seed: int = 0):
    return tiny(MambaConfig, MambaForCausalLM, vocab_size, seed, hidden_size=32, state_size=8, num_hidden_layers=2)


def tiny_falcon_mamba(vocab_size: int, seed: int = 0):
    return tiny(FalconMambaConfig, FalconMambaForCausalLM, vocab_size, seed, hidden_size=32, state_size=8,
                num_hidden_layers=2)


def tiny_bamba(vocab_size: int, seed: int = 0):  # a Mamba-2 layer, then an attention layer
    return tiny(BambaConfig, BambaForCausalLM, vocab_size, seed, attn_layer_indices=[1], mamba_n_heads=4,
                mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8, **ATTENTION)


def tiny_falcon_h1(vocab_size: int, seed: int = 0):  # attention and Mamba-2 side by side in each layer
    return tiny(FalconH1Config, FalconH1ForCausalLM, vocab_size, seed, mamba_d_ssm=32, mamba_n_heads=4,
                mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=8, **ATTENTION)


ARCHITECTURES = {"gpt2": tiny_gpt2, "llama": tiny_llama}
# More causal architectures, for the generation paths that differ between them (their own input preparation,
# masks per layer type, 2-D masks with static caches, recurrent caches).
MORE_ARCHITECTURES = {"qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "gemma2": tiny_gemma2, "phi3": tiny_phi3,
                      "phimoe": tiny_phimoe, "bloom": tiny_bloom, "mamba": tiny_mamba,
                      "falcon_mamba": tiny_falcon_mamba, "bamba": tiny_bamba, "falcon_h1": tiny_falcon_h1}
ALL_ARCHITECTURES = {**ARCHITECTURES, **MORE_ARCHITECTURES}
SEQ2SEQ_ARCHITECTURES = {"t5": tiny_t5, "bart": tiny_bart}


@pytest.fixture(params=sorted(ARCHITECTURES))
def base_model(request, tokenizer):
    return ARCHITECTURES[request.param](len(tokenizer))


@pytest.fixture(scope="session")
def seq2seq_tokenizer():
    return word_tokenizer(padding_side="right")


@pytest.fixture(params=sorted(SEQ2SEQ_ARCHITECTURES))
def seq2seq_model(request, seq2seq_tokenizer):
    return SEQ2SEQ_ARCHITECTURES[request.param](len(seq2seq_tokenizer))


def element_permutation(tokenizer, class_lists, shifts, vocab_size=None) -> torch.Tensor:
    """Independent oracle: the vocabulary permutation of the cyclic element `shifts` (one shift per factor).

    Word (c, j) of a factor goes to word (c + shift, j), and so does its capitalised form where every
    class has one; in a word-level vocabulary each of these is one token.
    """
    vocab = tokenizer.get_vocab()
    perm = torch.arange(vocab_size or len(vocab))
    for classes, shift in zip(class_lists, shifts):
        for form in (str, lambda w: w[0].upper() + w[1:]):
            for j in range(len(classes[0])):
                column = [form(words[j]) for words in classes]
                if all(w in vocab for w in column):
                    for c, word in enumerate(column):
                        perm[vocab[word]] = vocab[column[(c + shift) % len(column)]]
    return perm


def all_elements(class_lists):
    """Every element of the product of cyclic factors, as shift tuples."""
    return list(itertools.product(*(range(len(classes)) for classes in class_lists)))


# A byte-level BPE tokenizer trained on sentences that use the group words as whole words, so that each is one
# token, while rarer words are split into pieces that include group tokens: "Hispanics" -> "His"+"p"+...,
# "Blackstone" -> " Black"+"s"+..., "Manning" -> "Man"+"n"+..., "heather" -> " he"+"a"+"t"+"her".
BPE_GENDER_CLASSES = [["man", "he", "his", "male", "son"], ["woman", "she", "her", "female", "daughter"]]
BPE_FILLER = ("the a of and to was as for by worked known described job had doctor nurse teacher kind smart met saw "
              "said with")


def bpe_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    words = [w for classes in (BPE_GENDER_CLASSES, RACE_CLASSES, ORIENTATION_CLASSES) for c in classes for w in c]
    filler = BPE_FILLER.split()
    corpus = []
    for i, word in enumerate(words + filler):
        capitalised = word[0].upper() + word[1:]
        for k in range(12):
            other = filler[(i + k) % len(filler)]
            corpus += [f"{word} {other} {word}.", f"{capitalised} {other} {capitalised}, {word}",
                       f"{other} {capitalised} {other} {word}"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", padding_side=padding_side)


class WordActionOracle:
    """Independent oracle of the word-level action, from decoded strings only (not the library's tables).

    A token is a *whole word* when, in the decoded sequence, its text (without leading whitespace) starts and
    ends at word edges: the characters around it are not word characters (letters, digits, combining marks,
    or U+FFFD, which stands for a partial UTF-8 byte) or it is at an end of the text.
    Element `shifts` (one per cyclic factor) moves the class of every whole-word token that is a form (w, " w",
    W, " W") of a listed word, where that form is one token for every class. On the scores at position t it
    permutes the forms that would begin a word there (leading-space forms always; bare forms when the text
    of token t ends in a non-word character). After a whole-word group token, pieces beginning with a word
    character are impossible (-inf).
    """

    @staticmethod
    def word_character(character: str) -> bool:
        return character.isalnum() or character == "\ufffd" or unicodedata.category(character).startswith("M")

    def __init__(self, tokenizer, class_lists, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.orbit_of = {}  # token -> (factor, class, orbit)
        for f, classes in enumerate(class_lists):
            for j in range(len(classes[0])):
                for form in (lambda w: w, lambda w: " " + w, lambda w: w[0].upper() + w[1:],
                             lambda w: " " + w[0].upper() + w[1:]):
                    pieces = [tokenizer.encode(form(words[j]), add_special_tokens=False) for words in classes]
                    if all(len(p) == 1 for p in pieces):
                        orbit = [p[0] for p in pieces]
                        for c, token in enumerate(orbit):
                            self.orbit_of[token] = (f, c, orbit)
        self.texts = [tokenizer.decode([v]) for v in range(len(tokenizer))] + [""] * (vocab_size - len(tokenizer))
        self.starts_with_space = torch.tensor([t[:1].isspace() for t in self.texts])
        self.continues_word = torch.tensor([bool(t) and self.word_character(t[0]) for t in self.texts])

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (the oracle lives as long as the test module)
    def _spans(self, ids: tuple):
        """The decoded text, and the [start, end) characters of each token in it."""
        text, spans = "", []
        for t in range(len(ids)):
            start, text = len(text), self.tokenizer.decode(ids[: t + 1], clean_up_tokenization_spaces=False)
            spans.append((start, len(text)))
        return text, spans

    def word_edges(self, ids) -> tuple[list[bool], list[bool]]:
        """Per position: whether a word begins where the token's text (without leading space) begins, and
        whether one ends where it ends."""
        text, spans = self._spans(tuple(ids))
        begins, ends = [], []
        for start, end in spans:
            start += len(text[start:end]) - len(text[start:end].lstrip())
            begins.append(start == 0 or not self.word_character(text[start - 1]))
            ends.append(end == len(text) or not self.word_character(text[end]))
        return begins, ends

    def whole_words(self, ids) -> list[bool]:
        """Per position: a group token standing as a whole word."""
        begins, ends = self.word_edges(ids)
        return [i in self.orbit_of and b and e for i, b, e in zip(ids, begins, ends)]

    def _move(self, token, shifts):
        f, c, orbit = self.orbit_of[token]
        return orbit[(c + shifts[f]) % len(orbit)]

    def act(self, ids, shifts) -> list[int]:
        ids = list(ids)
        return [self._move(i, shifts) if whole else i for i, whole in zip(ids, self.whole_words(ids))]

    def output_permutations(self, ids, shifts) -> torch.Tensor:
        """[T, V] long: row t is the permutation p_t with M(g.x)[t, p_t[v]] = M(x)[t, v]."""
        text, spans = self._spans(tuple(ids))
        perms = torch.arange(self.vocab_size).repeat(len(ids), 1)
        for t, (_, end) in enumerate(spans):
            after_boundary = end == 0 or not self.word_character(text[end - 1])
            for token in self.orbit_of:
                if self.starts_with_space[token] or after_boundary:
                    perms[t, token] = self._move(token, shifts)
        return perms

    def glued(self, ids) -> torch.Tensor:
        """[T, V] bool: the scores that must be -inf (pieces after a whole-word group token)."""
        whole = torch.tensor(self.whole_words(list(ids)))
        return whole[:, None] & self.continues_word[None, :]


def assert_no_glued_words(oracle, sequences, prompt_length):
    """A generated token never continues a group token that began a word (the prompt may hold glued words)."""
    for row in sequences.tolist():
        begins, _ = oracle.word_edges(row)
        for t in range(prompt_length - 1, len(row) - 1):
            if row[t] in oracle.orbit_of and begins[t]:
                assert not oracle.continues_word[row[t + 1]], oracle.tokenizer.decode(row[: t + 2])


def assert_word_equivariant(model, oracle, ids, elements, atol=1e-4, check_mask=True) -> list[float]:
    """For every element g (shift tuple): M(g.x)[t, p_t[v]] == M(x)[t, v] for the oracle's action, and -inf
    exactly where the oracle says (unless `check_mask` is off, for negative controls, which have no mask).
    Returns the largest error over the scores that are not masked, per element."""
    rows = [list(r) for r in ids.tolist()]
    glued = torch.stack([oracle.glued(r) for r in rows])
    with torch.no_grad():
        y = model(input_ids=ids).logits.log_softmax(-1)
    assert not check_mask or torch.equal(torch.isneginf(y), glued)
    errors = []
    for shifts in elements:
        moved = torch.tensor([oracle.act(r, shifts) for r in rows])
        with torch.no_grad():
            back = model(input_ids=moved).logits.log_softmax(-1).gather(
                -1, torch.stack([oracle.output_permutations(r, shifts) for r in rows]))
        assert not check_mask or torch.equal(torch.isneginf(back), glued)
        errors.append((back - y).masked_fill(glued, 0).abs().max().item())
        assert errors[-1] <= atol, f"element {shifts}: error {errors[-1]}"
    return errors
