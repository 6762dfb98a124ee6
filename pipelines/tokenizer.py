"""A byte-level BPE tokenizer trained on the corpus with `tokenizers`, saved in HF format."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipelines.errors import UserError

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int, out_dir: Path):
    """Train byte-level BPE (no unknown tokens: every byte is in the base alphabet) and save it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    hf.save_pretrained(str(out_dir))
    return hf


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load a tokenizer from '{path}' ({type(e).__name__}): "
            "point tokenizer.path / model.path at an HF model directory"
        ) from None
