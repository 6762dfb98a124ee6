"""What every eval task is made of (pipelines/eval/eval_tasks.py): the sample records, RULER's
prompt
templates, random values and keys, the haystack a prompt is cut from, and the distractors.

Distractors come from the prompt first. A wrong option that never occurs in the prompt lets a
model that copies *anything* it has seen pick the gold answer without reading the question: the
likelihood score would then measure "has seen this string" rather than "found the right one".
So the wrong options of a question are drawn from strings of the same kind that sit in the same
prompt (other needles' values, other chains, the list's uncommon words), and fresh values fill in
only when the prompt holds too few (`Haystack.distractors`).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

import numpy as np

from pipelines.core.errors import UserError
from pipelines.world.tokenizer import document_separator_id

SNAP = 32  # a needle moves back at most this many tokens to a sentence end

# RULER's templates and answer prefixes (NVIDIA/RULER scripts/data/synthetic/constants.py, c3f5e3b)
NIAH_TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\nWhat are all the special magic "
    "{kind} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {kind} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above."
)
# RULER's prefix ends in a space; dropped: in byte-level BPE the space belongs to the next word
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
    "variables are assigned the value {query}, they are:"
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the {num_cw} most "
    "common words in the above list?"
)
CWE_PREFIX = " Answer: The top {num_cw} words that appear most often in the list are:"


def singular(text: str) -> str:
    """RULER's edit of the niah template and prefix when one value is asked for (niah.py)."""
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is")


@dataclass
class Query:
    lead: list[int]  # RULER's answer prefix after the prompt: exact match continues it greedily
    answer: str  # exact match: found (case-insensitive) in the greedy continuation of the lead
    options: list[list[int]]  # likelihood: options[0] is the gold answer's tokens
    max_new_tokens: int
    option_lead: list[int] | None = None  # the options follow this lead (None: `lead`)


@dataclass
class EvalSample:
    task: str
    length: int
    index: int
    depth: float  # the gold needle's depth in the haystack (0 = start, 1 = end)
    prompt_ids: list[int]  # exactly `length` tokens
    queries: list[Query]
    needle_starts: list[int] = field(default_factory=list)  # gold needles' first token in prompt
    needle_ids: list[list[int]] = field(default_factory=list)
    needle_cuts: list[int] = field(default_factory=list)  # haystack tokens before each of them
    haystack_tokens: int = 0
    variant: str = ""  # which RULER variant the sample follows (niah_multikey_2, ...)


@dataclass
class Placed:
    """A prompt with needles placed in its haystack (Haystack.assemble)."""

    prompt: list[int]
    starts: list[int]  # each needle's first token in the prompt
    cuts: list[int]  # haystack tokens before each needle
    hay_len: int


class Haystack:
    """Values, keys and haystacks over one tokenizer, held-out token stream and word list."""

    def __init__(self, tokenizer, stream, words: list[str], options: int = 4, seed: int = 0):
        if options < 2:
            raise UserError(f"eval.options = {options}: the likelihood score needs at least 2")
        self.tok, self.options, self.seed = tokenizer, options, seed
        self.stream = np.asarray(stream, dtype=np.int64)
        self.words = sorted({w for w in words if re.fullmatch(r"[a-z]{4,10}", w)})
        if len(self.words) < 50:
            raise UserError(f"the held-out text has {len(self.words)} distinct words; need 50")
        self.eos = document_separator_id(tokenizer)
        # what a document starts with: BOS where the tokenizer has one (Llama), else EOS (Qwen2)
        self.start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # byte-level BPE writes a newline as "Ċ": a token ending a sentence or a line
        self.sentence_end = {i for i, p in enumerate(pieces) if p and p[-1] in ".!?;Ċ\n"}

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    # --- values, keys, distractors -------------------------------------------------------

    def value(self, rng, kind: str) -> str:
        """RULER's value kinds: a 7-digit number, an adj-noun style word pair, a uuid4."""
        if kind == "number":
            return str(int(rng.integers(1_000_000, 10_000_000)))
        if kind == "word":
            return self.key(rng)
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))

    def values(self, rng, kind: str, n: int, avoid=frozenset()) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            v = self.value(rng, kind)
            if v not in avoid and v not in out:
                out.append(v)
        return out

    def key(self, rng) -> str:
        return "-".join(rng.choice(self.words, 2, replace=False))

    def distractors(self, rng, kind: str, in_prompt: list[str], avoid: set[str]) -> list[str]:
        """options - 1 wrong answers: strings of the prompt (in random order) first, fresh values
        of `kind` only for the places the prompt cannot fill."""
        pool = [v for v in dict.fromkeys(in_prompt) if v not in avoid]
        n = self.options - 1
        picked = [pool[i] for i in rng.permutation(len(pool))[:n]]
        return picked + self.values(rng, kind, n - len(picked), avoid | set(pool))

    # --- the haystack ----------------------------------------------------------------------

    def stream_hay(self, rng, hay_len: int) -> list[int]:
        """hay_len consecutive held-out tokens from a random place."""
        if len(self.stream) < hay_len + 1:
            raise UserError(f"the eval needs {hay_len} held-out tokens in a row; have fewer")
        a = int(rng.integers(0, len(self.stream) - hay_len))
        return self.stream[a : a + hay_len].tolist()

    def hay_room(self, length: int, fixed: int, what: str = "its needles") -> int:
        hay_len = length - 1 - fixed
        if hay_len < 16:
            raise UserError(f"eval length {length} is too short for {what} ({fixed} tokens)")
        return hay_len

    def assemble(self, hay, head, needles, depths, question, snap=True, bounds=None) -> Placed:
        """start + head + `hay` with `needles` at `depths` + question. A needle moves back to the
        nearest sentence end within SNAP tokens (snap=False: exactly at its depth), or to the
        last of `bounds` (a line haystack's line starts) at or before its depth."""
        hay_len = len(hay)
        cuts = [round(d * hay_len) for d in depths]
        if bounds is not None:
            cuts = [max(b for b in bounds if b <= c) for c in cuts]
        elif snap:
            cuts = [self._snap(hay, c) for c in cuts]
        order = sorted(range(len(needles)), key=lambda j: (cuts[j], j))
        prompt, starts, prev = [self.start, *head], [0] * len(needles), 0
        for j in order:
            prompt += hay[prev : cuts[j]]
            starts[j] = len(prompt)
            prompt += needles[j]
            prev = cuts[j]
        prompt += hay[prev:] + question
        return Placed(prompt, starts, cuts, hay_len)

    def _snap(self, hay: list[int], cut: int) -> int:
        for j in range(cut, max(0, cut - SNAP) - 1, -1):
            if j == 0 or hay[j - 1] in self.sentence_end:
                return j
        return cut

    def pad(self, tokens: list[int], n: int) -> list[int]:
        """tokens padded with newlines to exactly n (the last few tokens of a built haystack)."""
        newline = self.encode("\n")
        return tokens + (newline * n)[: n - len(tokens)]

    @staticmethod
    def record(sample: EvalSample, gold, placed: Placed, needles) -> EvalSample:
        """Record where the gold needles went."""
        sample.needle_starts = [placed.starts[j] for j in gold]
        sample.needle_cuts = [placed.cuts[j] for j in gold]
        sample.needle_ids = [needles[j] for j in gold]
        sample.haystack_tokens = placed.hay_len
        return sample

    @staticmethod
    def spread(rng, depth: float, n: int) -> list[float]:
        """The gold needle at `depth`, the others anywhere."""
        return [depth, *rng.uniform(0.0, 1.0, n - 1).tolist()]
