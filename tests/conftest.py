"""Shared fixtures: a word-level tokenizer, tiny models of many architectures, and an independent group oracle.

The oracle computes permutations straight from the word lists and the tokenizer's vocabulary, without
the library's tables, so that equivariance is checked against an independent definition.
"""

import functools
import itertools
import os
import shutil
import unicodedata
from types import SimpleNamespace
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import RemoteEntryNotFoundError
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BambaConfig,
    BambaForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    FalconH1Config,
    FalconH1ForCausalLM,
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MarianConfig,
    MarianMTModel,
    MistralConfig,
    MistralForCausalLM,
    MT5Config,
    MT5ForConditionalGeneration,
    NemotronHConfig,
    NemotronHForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PegasusConfig,
    PegasusForConditionalGeneration,
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
    Zamba2Config,
    Zamba2ForCausalLM,
)

from hf_equivariant import EquivariantModelForCausalLM, EquivariantModelForSeq2SeqLM, WordSwapGroup

# The models here are tiny: one thread runs them faster than two threads contending for the two cores.
torch.set_num_threads(1)


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


def wrap(base, tokenizer, groups=None, **options):
    """The one way tests wrap a model: `groups` (default gender x race) with `tokenizer`, and any
    `from_base_model` option (symmetrization, average, action, deduplicate, ...)."""
    cls = EquivariantModelForSeq2SeqLM if base.config.is_encoder_decoder else EquivariantModelForCausalLM
    if groups is None:
        groups = [WordSwapGroup("gender", GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
    return cls.from_base_model(base, groups, tokenizer, **options).eval()


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


def tiny_t5(vocab_size: int, seed: int = 0, config_class=T5Config, model_class=T5ForConditionalGeneration):
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, pad_token_id=0,
        eos_token_id=3, decoder_start_token_id=0, dropout_rate=0.0,
    )
    model = model_class(config).eval()
    with torch.no_grad():  # T5's own initialisation gives one repeated token in generation
        for name, param in model.named_parameters():
            if "layer_norm" not in name:
                param.normal_(0, 0.5)
    return model


def tiny_bart(vocab_size: int, seed: int = 0, config_class=BartConfig, model_class=BartForConditionalGeneration):
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, init_std=0.5, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0,
    )
    return model_class(config).eval()


def tiny_mt5(vocab_size: int, seed: int = 0):
    return tiny_t5(vocab_size, seed, MT5Config, MT5ForConditionalGeneration)


def tiny_pegasus(vocab_size: int, seed: int = 0):  # BART's layout with sinusoidal positions, pre-norm layers
    return tiny_bart(vocab_size, seed, PegasusConfig, PegasusForConditionalGeneration)


def tiny_marian(vocab_size: int, seed: int = 0):
    return tiny_bart(vocab_size, seed, MarianConfig, MarianMTModel)


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


def tiny_mistral(vocab_size: int, seed: int = 0):
    return tiny(MistralConfig, MistralForCausalLM, vocab_size, seed, sliding_window=4, **ATTENTION)


def tiny_gpt_neox(vocab_size: int, seed: int = 0):
    return tiny(GPTNeoXConfig, GPTNeoXForCausalLM, vocab_size, seed, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def tiny_opt(vocab_size: int, seed: int = 0):  # learned positions offset by 2, read from the attention mask
    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(
        vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        init_std=0.5, dropout=0.0)).eval()


def tiny_falcon(vocab_size: int, seed: int = 0):  # rotary positions, parallel attention and MLP
    return tiny(FalconConfig, FalconForCausalLM, vocab_size, seed, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4)


def tiny_mamba2(vocab_size: int, seed: int = 0):
    return tiny(Mamba2Config, Mamba2ForCausalLM, vocab_size, seed, hidden_size=32, num_heads=4, head_dim=16,
                state_size=8, n_groups=1, num_hidden_layers=2, chunk_size=8)


def tiny_zamba2(vocab_size: int, seed: int = 0):  # a Mamba-2 layer, then a hybrid layer with shared attention
    return tiny(Zamba2Config, Zamba2ForCausalLM, vocab_size, seed, hidden_size=32, num_hidden_layers=2,
                layers_block_type=["mamba", "hybrid"], mamba_d_state=8, n_mamba_heads=4, intermediate_size=64,
                num_attention_heads=4, num_key_value_heads=4, chunk_size=8, max_position_embeddings=64)


def tiny_nemotron_h(vocab_size: int, seed: int = 0):  # a Mamba-2, an attention and an MLP layer
    return tiny(NemotronHConfig, NemotronHForCausalLM, vocab_size, seed, hidden_size=32,
                layers_block_type=["mamba", "attention", "mlp"], num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, intermediate_size=64, ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=1,
                chunk_size=8, max_position_embeddings=64)


ARCHITECTURES = {"gpt2": tiny_gpt2, "llama": tiny_llama}
# More causal architectures, for the generation paths that differ between them (their own input preparation,
# masks per layer type, 2-D masks with static caches, recurrent caches).
MORE_ARCHITECTURES = {"qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "gemma2": tiny_gemma2, "phi3": tiny_phi3,
                      "phimoe": tiny_phimoe, "bloom": tiny_bloom, "mamba": tiny_mamba,
                      "falcon_mamba": tiny_falcon_mamba, "bamba": tiny_bamba, "falcon_h1": tiny_falcon_h1,
                      "mistral": tiny_mistral, "gpt_neox": tiny_gpt_neox, "opt": tiny_opt, "falcon": tiny_falcon,
                      "mamba2": tiny_mamba2, "zamba2": tiny_zamba2, "nemotron_h": tiny_nemotron_h}
ALL_ARCHITECTURES = {**ARCHITECTURES, **MORE_ARCHITECTURES}
SEQ2SEQ_ARCHITECTURES = {"t5": tiny_t5, "bart": tiny_bart}
ALL_SEQ2SEQ_ARCHITECTURES = {**SEQ2SEQ_ARCHITECTURES, "mt5": tiny_mt5, "pegasus": tiny_pegasus, "marian": tiny_marian}


@pytest.fixture(params=sorted(ARCHITECTURES))
def base_model(request, tokenizer):
    return ARCHITECTURES[request.param](len(tokenizer))


@pytest.fixture(scope="session")
def seq2seq_tokenizer():
    return word_tokenizer(padding_side="right")


@pytest.fixture(params=sorted(SEQ2SEQ_ARCHITECTURES))
def seq2seq_model(request, seq2seq_tokenizer):
    return SEQ2SEQ_ARCHITECTURES[request.param](len(seq2seq_tokenizer))


def all_elements(class_lists):
    """Every element of the product of cyclic factors, as shift tuples."""
    return list(itertools.product(*(range(len(classes)) for classes in class_lists)))


# A byte-level BPE tokenizer trained on sentences that use the group words as whole words, so that each is one
# token, while rarer words are split into pieces that include group tokens: "Hispanics" -> "His"+"p"+...,
# "Blackstone" -> " Black"+"s"+..., "Manning" -> "Man"+"n"+..., "heather" -> " he"+"a"+"t"+"her".
BPE_GENDER_CLASSES = [["man", "he", "his", "male", "son"], ["woman", "she", "her", "female", "daughter"]]
BPE_FILLER = ("the a of and to was as for by worked known described job had doctor nurse teacher kind smart met saw "
              "said with")


# Whole words and pieces: "His" starts "Hispanics", " male" starts "malevolent", " Black" starts "Blackstone",
# "Man" starts "Manning", " he" starts "heather" and "her" ends it, "man" ends "salesman".
BPE_MIXED_PROMPTS = ["Hispanics met the Black man", "the malevolent Blackstone saw her son",
                     "Manning and heather, a gay salesman", "Man, he said. His White son"]
# A whole word of every factor, so that no element but the identity fixes the prompt (no exact ties).
BPE_TIE_FREE_PROMPTS = ["the gay Black man met Hispanics", "Manning saw the straight Asian woman",
                        "He said: White, gay"]


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


class ActionOracle:
    """Independent oracle of the group action, from decoded strings only (not the library's tables).

    `action="word"`: a token is a *whole word* when, in the decoded sequence, its text (without leading
    whitespace) starts and ends at word edges: the characters around it are not word characters (letters,
    digits, combining marks, or U+FFFD, which stands for a partial UTF-8 byte) or it is at an end of the text.
    Element `shifts` (one per cyclic factor) moves the class of every whole-word token that is a form (w, " w",
    W, " W") of a listed word, where that form is one token for every class. On the scores at position t it
    permutes the forms that would begin a word there (decoded after the tokens up to t, their text starts at
    a word edge). After a whole-word group token, tokens that would continue that word (decoded right after
    it, their text starts with a word character, with no edge before it) are impossible (-inf).
    `action="token"`: every group token moves wherever it stands, every score column of a group token is
    permuted at every position, and nothing is masked.
    A word-level tokenizer decodes every token as a word of its own: there both actions are the same.
    """

    @staticmethod
    def word_character(character: str) -> bool:
        return character.isalnum() or character == "\ufffd" or unicodedata.category(character).startswith("M")

    def __init__(self, tokenizer, class_lists, vocab_size: int, action: str = "word"):
        assert action in ("word", "token"), action
        self.tokenizer, self.vocab_size, self.action = tokenizer, vocab_size, action
        self.orbit_of = {}  # token -> (factor, class, orbit)
        for f, classes in enumerate(class_lists):
            for j in range(len(classes[0])):
                for form in (lambda w: w, lambda w: " " + w, lambda w: w[0].upper() + w[1:],
                             lambda w: " " + w[0].upper() + w[1:]):
                    pieces = [tokenizer.encode(form(words[j]), add_special_tokens=False) for words in classes]
                    orbit = [p[0] for p in pieces if len(p) == 1]
                    if len(set(orbit)) == len(classes) and tokenizer.unk_token_id not in orbit:
                        for c, token in enumerate(orbit):
                            self.orbit_of[token] = (f, c, orbit)
        self.group_tokens = sorted(self.orbit_of)
        self.texts = [self.decode([v]) for v in range(len(tokenizer))] + [""] * (vocab_size - len(tokenizer))
        anchor = self.group_tokens[0]  # a group word: what would continue it?
        self.continues_word = torch.tensor([v < len(tokenizer) and self._edge_after((anchor,), v) == (True, False)
                                            for v in range(vocab_size)])

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def _edge_after(self, prefix: tuple, token: int):
        """`token` read right after `prefix`: (whether its text, without leading space, starts with a word
        character, whether a word edge precedes it); None if it adds no text."""
        text, spans = self._spans(prefix + (token,))
        start, end = spans[-1]
        start += len(text[start:end]) - len(text[start:end].lstrip())
        if start >= end:
            return None
        return self.word_character(text[start]), start == 0 or not self.word_character(text[start - 1])

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (the oracle lives as long as the test session)
    def _spans(self, ids: tuple):
        """The text of `ids` and the [start, end) characters of each token in it. Each token adds what decoding
        it after its prefix adds; a partial UTF-8 byte (a token that decodes alone to U+FFFD) adds U+FFFD,
        whatever bytes surround it, as the library reads it (a word character)."""
        if not ids:
            return "", ()
        text, spans = self._spans(ids[:-1])
        alone = self.texts[ids[-1]]
        added = alone if "\ufffd" in alone else self.decode(ids)[len(self.decode(ids[:-1])):]
        return text + added, spans + ((len(text), len(text) + len(added)),)

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def _begins(self, ids: tuple) -> torch.Tensor:
        """[T, G] bool: whether group token g would begin a word right after ids[: t + 1]."""
        return torch.tensor([[bool((self._edge_after(ids[: t + 1], v) or (0, 0))[1]) for v in self.group_tokens]
                             for t in range(len(ids))], dtype=torch.bool).view(len(ids), len(self.group_tokens))

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
        """Per position: a group token the action moves (standing as a whole word, for the word action)."""
        if self.action == "token":
            return [i in self.orbit_of for i in ids]
        begins, ends = self.word_edges(ids)
        return [i in self.orbit_of and b and e for i, b, e in zip(ids, begins, ends)]

    def _move(self, token, shifts):
        f, c, orbit = self.orbit_of[token]
        return orbit[(c + shifts[f]) % len(orbit)]

    def permutation(self, shifts) -> torch.Tensor:
        """[V] long: every group token moved, whatever surrounds it (the token action on a vocabulary)."""
        return self._permutation(tuple(shifts)).clone()

    @functools.lru_cache(maxsize=256)  # noqa: B019
    def _permutation(self, shifts: tuple) -> torch.Tensor:
        perm = torch.arange(self.vocab_size)
        for token in self.group_tokens:
            perm[token] = self._move(token, shifts)
        return perm

    def act(self, ids, shifts) -> list[int]:
        ids = list(ids)
        return [self._move(i, shifts) if whole else i for i, whole in zip(ids, self.whole_words(ids))]

    def output_permutations(self, ids, shifts) -> torch.Tensor:
        """[T, V] long: row t is the permutation p_t with M(g.x)[t, p_t[v]] = M(x)[t, v]."""
        ids = tuple(ids)
        columns = torch.tensor(self.group_tokens)
        acted = torch.ones(len(ids), len(columns), dtype=torch.bool) if self.action == "token" else self._begins(ids)
        perms = torch.arange(self.vocab_size).repeat(len(ids), 1)
        perms[:, columns] = torch.where(acted, self._permutation(tuple(shifts))[columns], columns)
        return perms

    def glued(self, ids) -> torch.Tensor:
        """[T, V] bool: the scores that must be -inf (tokens that would continue a whole-word group token)."""
        if self.action == "token":
            return torch.zeros(len(ids), self.vocab_size, dtype=torch.bool)
        whole = torch.tensor(self.whole_words(list(ids)))
        return whole[:, None] & self.continues_word[None, :]

    def fixed_by(self, ids, elements) -> list:
        """The elements that leave `ids` as they are."""
        return [shifts for shifts in elements if self.act(ids, shifts) == list(ids)]


def element_permutation(tokenizer, class_lists, shifts, vocab_size=None) -> torch.Tensor:
    """[V] long: the oracle's token action of element `shifts` on the vocabulary (every group token moved)."""
    return ActionOracle(tokenizer, class_lists, vocab_size or len(tokenizer), "token").permutation(shifts)


def causal_token_errors(model, tokenizer, class_lists, batch) -> list[float]:
    """Causal logits under the token action (word-level tokenizer), `batch` the tokenised prompts (input_ids,
    attention_mask): for every element g, max |M(g.x)[..., p_g] - M(x)|, with p_g the oracle's vocabulary
    permutation."""
    errors = []
    with torch.no_grad():
        reference = model(**batch).logits
        for g in all_elements(class_lists):
            p = element_permutation(tokenizer, class_lists, g)
            moved = model(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"]).logits
            errors.append((moved[..., p] - reference).abs().max().item())
    return errors


def token_generation_mismatches(model, tokenizer, class_lists, batch, **options) -> list[tuple]:
    """The elements g for which generate(g.x) != g.generate(x) under the token action (word-level tokenizer), on
    `batch` (input_ids, attention_mask; causal or seq2seq) with generate()'s `options`; [] when none."""
    mismatches = []
    with torch.no_grad():
        out = model.generate(**batch, **options)
        for g in all_elements(class_lists):
            p = element_permutation(tokenizer, class_lists, g)
            moved = model.generate(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"], **options)
            if not torch.equal(moved, p[out]):
                mismatches.append(g)
    return mismatches


def sampling_errors(model, tokenizer, class_lists, batch, sampling) -> list[float]:
    """Sampling under the token action (word-level tokenizer; causal or seq2seq; `sampling` generate()'s options with
    two return sequences, logits returned): for every element g, max |log p(g.y_t | g.x, g.y_<t)[p_g] -
    log p(y_t | x, y_<t)| along the sampled sequences y, teacher-forced against the distributions generate() drew
    from (after checking that the same seed draws the same sequences without a cache)."""
    with torch.no_grad():
        torch.manual_seed(0)
        sampled = model.generate(**batch, **sampling)
        torch.manual_seed(0)
        assert torch.equal(sampled.sequences, model.generate(**batch, **sampling, use_cache=False).sequences)
        drawn = torch.stack(sampled.logits, dim=1).log_softmax(-1)  # [2B, 6, V], before min_new_tokens' eos mask
        sequences, mask = sampled.sequences, batch["attention_mask"].repeat_interleave(2, dim=0)
        prompts = batch["input_ids"].repeat_interleave(2, dim=0)
        errors = []
        for g in all_elements(class_lists):
            p = element_permutation(tokenizer, class_lists, g)
            if model.config.is_encoder_decoder:
                forced = model(input_ids=p[prompts], attention_mask=mask, decoder_input_ids=p[sequences[:, :-1]])
                read = forced.logits
            else:  # the positions whose next token was drawn: the prompt's last and the generated ones but the last;
                # positions counted from the first real token, as generate() counts them on left-padded prompts
                width = prompts.shape[1]
                full_mask = torch.cat([mask, torch.ones_like(sequences[:, width:])], dim=1)[:, :-1]
                positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
                forced = model(input_ids=p[sequences[:, :-1]], attention_mask=full_mask, position_ids=positions)
                read = forced.logits[:, width - 1:]
            errors.append((read.log_softmax(-1)[..., p] - drawn).abs().max().item())
    return errors


def seq2seq_token_errors(model, tokenizer, class_lists, prompts, targets) -> list[float]:
    """Teacher-forced seq2seq logits under the token action (word-level tokenizer): for every element g,
    max |M(g.x, g.y)[..., p_g] - M(x, y)|, with p_g the oracle's vocabulary permutation."""
    batch = tokenizer(prompts, text_target=targets, return_tensors="pt", padding=True)
    decoder_ids = model.prepare_decoder_input_ids_from_labels(batch["labels"])
    errors = []
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          decoder_input_ids=decoder_ids).logits
        for g in all_elements(class_lists):
            p = element_permutation(tokenizer, class_lists, g)
            moved = model(input_ids=p[batch["input_ids"]], attention_mask=batch["attention_mask"],
                          decoder_input_ids=p[decoder_ids]).logits
            errors.append((moved[..., p] - reference).abs().max().item())
    return errors


def assert_word_equivariant(model, oracle, ids, elements, atol=1e-4, check_mask=True) -> list[float]:
    """For every element g (shift tuple): M(g.x)[t, p_t[v]] == M(x)[t, v] for the oracle's action, and -inf
    exactly where the oracle masks (unless `check_mask` is off, for negative controls, which have no mask).
    Returns the largest error over the scores that are not masked, per element. (The shared tester,
    testing_common.py, checks every architecture; this serves tests of one method or one feature.)"""
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


def assert_no_glued_words(oracle, sequences, prompt_length):
    """A generated token never continues a group token that began a word (the prompt may hold glued words)."""
    for row in sequences.tolist():
        begins, _ = oracle.word_edges(row)
        for t in range(prompt_length - 1, len(row) - 1):
            if row[t] in oracle.orbit_of and begins[t]:
                assert not oracle.continues_word[row[t + 1]], oracle.tokenizer.decode(row[: t + 2])


@pytest.fixture
def mocked_hub(tmp_path):
    """HfApi.create_repo / create_commit and hf_hub_download replaced by a local folder (HF_HUB_OFFLINE=1 blocks
    the rest)."""
    remote = tmp_path / "remote"
    remote.mkdir()

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            target = remote / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(op.path_or_fileobj, target)
        return SimpleNamespace(commit_url="https://hub.local/c/1", oid="0" * 40, pr_url=None)

    def download(repo_id, filename, **kwargs):
        if not (remote / filename).exists():
            raise RemoteEntryNotFoundError(f"404: {filename} is not in {repo_id}",
                                           response=SimpleNamespace(headers={}, request=None))
        return str(remote / filename)

    with mock.patch.object(HfApi, "create_repo", autospec=True,
                           side_effect=lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id)), \
         mock.patch.object(HfApi, "create_commit", autospec=True, side_effect=create_commit), \
         mock.patch("huggingface_hub.hf_hub_download", side_effect=download):
        yield remote
