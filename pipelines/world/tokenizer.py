"""A byte-level BPE tokenizer trained on the corpus with `tokenizers`, saved in HF format.

It uses exactly Qwen2's normalizer and pre-tokenizer: transformers' AutoTokenizer loads a tokenizer
beside a Qwen2 model as `Qwen2Tokenizer`, which rebuilds that pipeline around the saved vocab and
merges. Training with anything else would give different token ids depending on how it is loaded
(HF, vLLM, raw `tokenizers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.core.errors import UserError

# transformers is imported inside the functions: the config schema reaches this module (through
# eval_tasks), and importing transformers costs 3-5 s of a `policylong --help` that needs none.
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int, out_dir: Path):
    """Train byte-level BPE (no unknown tokens: every byte is in the base alphabet) and save it."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS).save_pretrained(
        str(out_dir)
    )
    return load_tokenizer(out_dir)  # the way every later step loads it


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    hint = "point tokenizer.path / model.path at an HF model directory with tokenizer files"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load a tokenizer from '{path}' ({type(e).__name__}): {hint}"
        ) from None
    # transformers builds an empty tokenizer (vocabulary of 1) from a directory that has only a
    # model config: it would tokenize every document to nothing
    if len(tokenizer) < 2 or not tokenizer("hello world")["input_ids"]:
        raise UserError(f"cannot load a tokenizer from '{path}' (no tokenizer files): {hint}")
    return tokenizer


# Pretraining end-of-text tokens, in the order they are looked for (Qwen2/SmolLM2, Llama 3).
END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>")


def document_separator_id(tokenizer) -> int:
    """The token between documents in a packed sequence: the pretraining end-of-text token. An
    instruct tokenizer's EOS ends a chat turn (SmolLM2-Instruct, Qwen2.5-Instruct: <|im_end|>),
    not a document; its vocabulary still holds the pretraining one, used when present."""
    vocab = tokenizer.get_vocab()
    return next((vocab[t] for t in END_OF_TEXT if t in vocab), tokenizer.eos_token_id)
