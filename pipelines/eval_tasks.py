"""RULER-style long-context tasks, built from held-out corpus text at exact token lengths.

RULER (Hsieh et al., 2024) tests what a long-context model can find and use in its window with
synthetic tasks inserted into filler text. These are its task families, with its templates where
a small model allows (RULER, arXiv 2404.06654):

    niah_single        one needle "One of the special magic {kind}s for {key} is: {value}." in
                       held-out text; the kind cycles over number (7 digits), word, uuid
    niah_multikey      four needles with different keys; the question names one
    niah_multivalue    four needles with the same key; every value is an answer
    niah_multiquery    four needles with different keys; every key is asked for
    variable_tracking  chains "VAR X = 12345." -> "VAR Y = X." ... spread over the text; name all
                       variables holding the queried value (other chains are the distractors)
    common_words       a numbered word list; the three most frequent words are the answers

Every sample is token ids: BOS (EOS where the tokenizer has none, as in pretraining) + the
instruction +
the haystack with the needles inserted + the question, exactly `length` tokens. Each question
then has a lead, the answer prefix the model continues ("The special magic number for {key}
is:"), which repeats the needle's wording so that a model that copies can continue it; RULER's
prefix adds "mentioned in the provided text". The gold needle of sample i sits at depth
i / (n - 1) of the haystack, moved back to the nearest sentence end within 32 tokens.

Two scores per query (pipelines/evaluate.py): exact match of the greedy continuation (RULER's
string match) and a likelihood score, whether the gold answer has the highest mean log-probability
among `options` answers of the same kind, the others taken from the same haystack where the task
has them (other keys' values, other chains, the uncommon words), else fresh. Chance is 1/options.

Samples depend only on the tokenizer, the held-out stream, the task, the length, the index and
the seed: every checkpoint sees identical inputs.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import UserError
from pipelines.tokenizer import document_separator_id

TASKS = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "variable_tracking",
    "common_words",
)
NEEDLES = 4  # needles in the multi-needle tasks (RULER: 4)
COMMON_WORDS = 3  # answers of common_words (RULER: 10, too many for a small model's window)
SNAP = 32  # a needle moves back at most this many tokens to a sentence end


@dataclass
class Query:
    lead: list[int]  # the answer prefix, after the prompt
    answer: str  # exact match: found in the greedy continuation of prompt + lead
    options: list[list[int]]  # likelihood: options[0] is the gold answer's tokens
    max_new_tokens: int


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


class TaskBuilder:
    """Builds samples of every task from one tokenizer, held-out token stream and word list."""

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

    def sample(self, task: str, length: int, index: int, n: int) -> EvalSample:
        if task not in TASKS:
            raise UserError(f"unknown eval task '{task}': choose from {', '.join(TASKS)}")
        rng = np.random.default_rng([self.seed, TASKS.index(task), length, index])
        depth = index / (n - 1) if n > 1 else 0.5
        return getattr(self, f"_{task}")(rng, length, index, depth)

    # --- values of each kind ---------------------------------------------------------------

    def _value(self, rng, kind: str) -> str:
        if kind == "number":
            return str(int(rng.integers(1_000_000, 10_000_000)))
        if kind == "word":
            return str(rng.choice(self.words))
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))

    def _values(self, rng, kind: str, n: int, avoid: set[str] = frozenset()) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            v = self._value(rng, kind)
            if v not in avoid and v not in out:
                out.append(v)
        return out

    def _key(self, rng) -> str:
        return "-".join(rng.choice(self.words, 2, replace=False))

    # --- the haystack ------------------------------------------------------------------------

    def _assemble(self, rng, length, head, needles, depths, question, snap=True) -> tuple:
        """EOS + head + held-out text with `needles` at `depths` + question: `length` tokens.
        Returns the prompt, each needle's start in it, the haystack tokens before each needle
        and the haystack's length."""
        fixed = 1 + len(head) + len(question) + sum(len(x) for x in needles)
        hay_len = length - fixed
        if hay_len < 16:
            raise UserError(f"eval length {length} is too short for its needles ({fixed} tokens)")
        if len(self.stream) < hay_len + 1:
            raise UserError(f"eval length {length} needs {hay_len} held-out tokens; have fewer")
        a = int(rng.integers(0, len(self.stream) - hay_len))
        hay = self.stream[a : a + hay_len].tolist()
        cuts = [round(d * hay_len) for d in depths]
        cuts = [self._snap(hay, c) for c in cuts] if snap else cuts
        order = sorted(range(len(needles)), key=lambda j: (cuts[j], j))
        prompt, starts, prev = [self.start, *head], [0] * len(needles), 0
        for j in order:
            prompt += hay[prev : cuts[j]]
            starts[j] = len(prompt)
            prompt += needles[j]
            prev = cuts[j]
        prompt += hay[prev:] + question
        assert len(prompt) == length, (len(prompt), length)
        return prompt, starts, cuts, hay_len

    def _snap(self, hay: list[int], cut: int) -> int:
        for j in range(cut, max(0, cut - SNAP) - 1, -1):
            if j == 0 or hay[j - 1] in self.sentence_end:
                return j
        return cut

    @staticmethod
    def _with_needles(sample: EvalSample, gold, placed) -> EvalSample:
        """Record where the gold needles went (placed: _assemble's result)."""
        _, starts, cuts, hay_len = placed
        sample.needle_starts = [starts[j] for j in gold]
        sample.needle_cuts = [cuts[j] for j in gold]
        sample.haystack_tokens = hay_len
        return sample

    def _spread(self, rng, depth: float, n: int) -> list[float]:
        """The gold needle at `depth`, the others anywhere."""
        return [depth, *rng.uniform(0.0, 1.0, n - 1).tolist()]

    # --- needle in a haystack ------------------------------------------------------------

    def _niah(self, rng, length, index, depth, *, kind, keys, values, gold, asked) -> EvalSample:
        """needles "for keys[j] is: values[j]"; gold = which needles are answers (first one at
        `depth`); asked = the keys the questions name, one query per (key, answer)."""
        head = self.encode(
            f"Some special magic {kind}s are hidden within the following text. Make sure to "
            f"memorize it. I will quiz you about the {kind}s afterwards.\n"
        )
        value_ids = [self.encode(f" {v}") for v in values]
        needles = [
            self.encode(f" One of the special magic {kind}s for {k} is:") + ids + self.encode(".")
            for k, ids in zip(keys, value_ids, strict=True)
        ]
        first = gold[0]
        depths = self._spread(rng, depth, len(needles))
        depths[0], depths[first] = depths[first], depths[0]
        many_values = len(set(asked)) < len(asked)  # multivalue: one key, several answers
        names = ", ".join(sorted(set(asked), key=asked.index))
        what = "What are all the" if len(gold) > 1 else "What is the"
        plural = "s" if len(gold) > 1 else ""
        question = self.encode(
            f"\n{what} special magic {kind}{plural} for {names} mentioned in the provided text?\n"
        )
        placed = self._assemble(rng, length, head, needles, depths, question)
        queries = []
        for j, key in zip(gold, asked, strict=True):
            if many_values:  # one answer prefix; the continuation should list every value
                lead = self.encode(f"The special magic {kind}s for {key} are:")
                budget = sum(len(value_ids[i]) + 2 for i in gold)
            else:
                lead = self.encode(f"The special magic {kind} for {key} is:")
                budget = len(value_ids[j]) + 4
            others = [value_ids[i] for i in range(len(values)) if keys[i] != key]
            fresh = self._values(rng, kind, self.options, set(values))
            wrong = others + [self.encode(f" {v}") for v in fresh]
            queries.append(Query(lead, values[j], [value_ids[j], *wrong[: self.options - 1]],
                                 budget))  # fmt: skip
        sample = EvalSample("", length, index, depth, placed[0], queries)
        sample.needle_ids = [needles[j] for j in gold]
        return self._with_needles(sample, gold, placed)

    def _niah_single(self, rng, length, index, depth) -> EvalSample:
        kind = ("number", "word", "uuid")[index % 3]
        keys, values = [self._key(rng)], self._values(rng, kind, 1)
        s = self._niah(rng, length, index, depth, kind=kind, keys=keys, values=values, gold=[0],
                       asked=keys)  # fmt: skip
        s.task = "niah_single"
        return s

    def _niah_multikey(self, rng, length, index, depth) -> EvalSample:
        keys, values = [self._key(rng) for _ in range(NEEDLES)], self._values(rng, "number", 4)
        s = self._niah(rng, length, index, depth, kind="number", keys=keys, values=values,
                       gold=[0], asked=keys[:1])  # fmt: skip
        s.task = "niah_multikey"
        return s

    def _niah_multivalue(self, rng, length, index, depth) -> EvalSample:
        key, values = self._key(rng), self._values(rng, "number", NEEDLES)
        gold = list(range(NEEDLES))
        s = self._niah(rng, length, index, depth, kind="number", keys=[key] * NEEDLES,
                       values=values, gold=gold, asked=[key] * NEEDLES)  # fmt: skip
        s.task = "niah_multivalue"
        return s

    def _niah_multiquery(self, rng, length, index, depth) -> EvalSample:
        keys, values = [self._key(rng) for _ in range(NEEDLES)], self._values(rng, "number", 4)
        gold = list(range(NEEDLES))
        s = self._niah(rng, length, index, depth, kind="number", keys=keys, values=values,
                       gold=gold, asked=keys)  # fmt: skip
        s.task = "niah_multiquery"
        return s

    # --- variable tracking ---------------------------------------------------------------

    def _variable_tracking(self, rng, length, index, depth) -> EvalSample:
        hops = 2  # chains of 3 variables (RULER: 4 hops; too many for a small window)
        letters = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        names: list[str] = []
        while len(names) < self.options * (hops + 1):
            name = "".join(rng.choice(letters, 5))
            if name not in names:
                names.append(name)
        chains = [names[c * (hops + 1) : (c + 1) * (hops + 1)] for c in range(self.options)]
        values = [str(v) for v in rng.choice(np.arange(10_000, 100_000), self.options, False)]
        needles, depths = [], []
        for c, chain in enumerate(chains):  # chain 0 is asked for; its first statement at depth
            start = depth if c == 0 else float(rng.uniform(0.0, 1.0))
            depths += sorted([start, *rng.uniform(start, 1.0, hops).tolist()])
            needles.append(self.encode(f" VAR {chain[0]} = {values[c]}."))
            needles += [self.encode(f" VAR {b} = {a}.") for a, b in itertools.pairwise(chain)]
        head = self.encode(
            "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
        )
        question = self.encode(
            f"\nQuestion: Find all variables that are assigned the value {values[0]} in the text "
            "above.\n"
        )
        # unsnapped: a chain's statements must keep their order
        placed = self._assemble(rng, length, head, needles, depths, question, snap=False)
        lead = self.encode(
            "Answer: According to the chain(s) of variable assignment in the text above, "
            f"{hops + 1} variables are assigned the value {values[0]}, they are:"
        )
        options = [self.encode(" " + " ".join(chain)) for chain in chains]
        budget = len(options[0]) + 4
        queries = [Query(lead, chains[0][0], options, budget)]
        queries += [Query(lead, name, [], budget) for name in chains[0][1:]]  # exact match only
        sample = EvalSample("variable_tracking", length, index, depth, placed[0], queries)
        sample.needle_ids = needles[: hops + 1]
        return self._with_needles(sample, range(hops + 1), placed)

    # --- common words extraction ---------------------------------------------------------

    def _common_words(self, rng, length, index, depth) -> EvalSample:
        head = self.encode(
            "Below is a numbered list of words. In these words, some appear more often than "
            "others. Memorize the ones that appear most often.\n"
        )
        question = self.encode(
            f"\nQuestion: What are the {COMMON_WORDS} most common words in the above list?\n"
        )
        hay_len = length - 1 - len(head) - len(question)
        words = rng.permutation(self.words).tolist()
        common, rare = words[:COMMON_WORDS], words[COMMON_WORDS:]
        per_item = np.mean([len(self.encode(f" {i}. {w}")) for i, w in enumerate(rare[:50], 1)])
        n_items = int(hay_len / per_item)
        each = max(4, n_items // (4 * COMMON_WORDS))  # the common words fill ~1/4 of the list
        n_rare = max(0, n_items - each * COMMON_WORDS)
        bag = common * each + [rare[i % len(rare)] for i in range(n_rare)]
        bag = rng.permutation(bag).tolist()
        hay: list[int] = []
        listed = Counter()
        for i, w in enumerate(bag, 1):
            item = self.encode(f" {i}. {w}")
            if len(hay) + len(item) > hay_len:
                break
            hay += item
            listed[w] += 1
        newline = self.encode("\n")
        hay += (newline * hay_len)[: hay_len - len(hay)]  # pad the last few tokens
        ranked = [w for w, _ in listed.most_common()]
        if (
            len(ranked) <= COMMON_WORDS
            or min(listed[w] for w in common) <= listed[ranked[COMMON_WORDS]]
        ):
            raise UserError(f"eval length {length} is too short for common_words")
        prompt = [self.start, *head, *hay, *question]
        lead = self.encode(
            f"Answer: The top {COMMON_WORDS} words that appear most often in the list are:"
        )
        once = [w for w in rare if listed[w] == 1] or rare
        budget = sum(len(self.encode(f" {w},")) for w in common) + 4
        queries = []
        for w in common:
            wrong = rng.choice(once, self.options - 1, replace=False).tolist()
            options = [self.encode(f" {x}") for x in [w, *wrong]]
            queries.append(Query(lead, w, options, budget))
        return EvalSample("common_words", length, index, float("nan"), prompt, queries)
