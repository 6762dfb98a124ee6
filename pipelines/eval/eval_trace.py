"""RULER's multi-hop tracing and aggregation tasks.

variable_tracking  RULER's vt: "VAR X = 12345" then "VAR Y = VAR X" ... (5 uppercase letters a
                   name, HOPS hops) as lines of RULER's noise haystack; name all variables
                   that hold the queried value. HOPS is 1, not RULER's 4: at 4 hops SmolLM2-135M
                   scores chance (0.22, 9 samples at 512 tokens), at 1 hop 0.50 (6 samples).
                   RULER inserts one chain; here options - 1
                   more chains of the same shape are the distractors, so a model that copies
                   any chain it saw scores chance. RULER's one-shot example (built at 500
                   tokens) is left out: it would fill most of a 512-token window.
common_words       RULER's cwe below 4K (common words x 6, the rest x 1 in one numbered list,
                   a one-shot example before it), COMMON_WORDS answers instead of 10. The
                   distractors are uncommon words of the list that are the one-shot example's
                   common words, repeated there so that every option occurs equally often in
                   the whole prompt: only counting within the asked list tells them apart.
"""

from __future__ import annotations

import itertools
import string

import numpy as np

from pipelines.core.errors import UserError
from pipelines.eval.eval_haystack import (
    CWE_PREFIX,
    CWE_TEMPLATE,
    VT_PREFIX,
    VT_TEMPLATE,
    EvalSample,
    Haystack,
    Query,
)
from pipelines.eval.eval_niah import NOISE, _lines

HOPS = 1  # RULER: 4 (module docstring)
COMMON_WORDS = 3  # RULER: 10, too many for a 512-token window with its example
COMMON_REPEATS = 6  # RULER's freq_cw below 4K (uncommon words once)


def variable_tracking(h: Haystack, rng, length, index, depth) -> EvalSample:
    letters = list(string.ascii_uppercase)
    names: list[str] = []
    while len(names) < h.options * (HOPS + 1):
        name = "".join(rng.choice(letters, 5))
        names += [name] if name not in names else []
    chains = [names[c * (HOPS + 1) : (c + 1) * (HOPS + 1)] for c in range(h.options)]
    values = [str(v) for v in rng.choice(np.arange(10_000, 100_000), h.options, False)]
    needles, depths = [], []
    for c, chain in enumerate(chains):  # chain 0 is asked for; its first statement at `depth`
        start = depth if c == 0 else float(rng.uniform(0.0, 1.0))
        depths += sorted([start, *rng.uniform(start, 1.0, HOPS).tolist()])
        needles.append(h.encode(f"VAR {chain[0]} = {values[c]}\n"))
        needles += [h.encode(f"VAR {b} = VAR {a}\n") for a, b in itertools.pairwise(chain)]
    head_text, question_text = VT_TEMPLATE.split("{context}")
    head = h.encode(head_text)
    question = h.encode(question_text.format(query=values[0]))
    hay_len = h.hay_room(length, len(head) + len(question) + sum(map(len, needles)), "its chains")
    hay, bounds, _ = _lines(h, rng, hay_len, lambda rng: (NOISE, None))
    placed = h.assemble(hay, head, needles, depths, question, bounds=bounds)
    lead = h.encode(VT_PREFIX.format(num_v=HOPS + 1, query=values[0]))
    options = [h.encode(" " + " ".join(chain)) for chain in chains]  # the other chains: wrong
    budget = len(options[0]) + 4
    queries = [Query(lead, chains[0][0], options, budget)]
    queries += [Query(lead, name, [], budget) for name in chains[0][1:]]  # exact match only
    sample = EvalSample("variable_tracking", length, index, depth, placed.prompt, queries)
    sample.variant = "vt"
    return h.record(sample, range(HOPS + 1), placed, needles)


def _numbered(h: Haystack, words: list[str]) -> list[int]:
    return h.encode(" ".join(f"{i}. {w}" for i, w in enumerate(words, 1)))


def _cwe_block(h: Haystack, listing: list[int], answer: list[str] | None) -> list[int]:
    """RULER's cwe template around a list; with `answer`, the one-shot example (prefix and the
    example's answer "1. a 2. b ..." follow, then a newline)."""
    num_cw = len(answer) if answer else COMMON_WORDS
    head_text, question_text = CWE_TEMPLATE.split("{context}")
    block = h.encode(head_text) + listing + h.encode(question_text.format(num_cw=num_cw))
    if answer is None:
        return block
    shown = " ".join(f"{i}. {w}" for i, w in enumerate(answer, 1))
    return block + h.encode(CWE_PREFIX.format(num_cw=num_cw) + " " + shown + "\n")


def common_words(h: Haystack, rng, length, index, depth) -> EvalSample:
    words = rng.permutation(h.words).tolist()
    k, d = COMMON_WORDS, h.options - 1
    common, decoys = words[:k], words[k : k + d]
    fresh, rare = words[k + d : 2 * k + d], words[2 * k + d :]
    # decoys: once in the asked list, (repeats - 2) times in the example list, once in the
    # example's answer -- as often in the prompt as a common word is in the asked list
    example = rng.permutation(decoys * (COMMON_REPEATS - 2) + fresh).tolist()
    prefix = [h.start, *_cwe_block(h, _numbered(h, example), decoys)]
    order = rng.permutation(len(rare) + k * COMMON_REPEATS + d)

    def build(n: int) -> tuple[list[str], list[int]]:  # the list with n rare words, its prompt
        items = common * COMMON_REPEATS + decoys + rare[:n]
        listing = [items[i] for i in order if i < len(items)]
        return listing, prefix + _cwe_block(h, _numbered(h, listing), None)

    lo, hi = 0, min(len(rare), length)  # the most rare words that fit: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(build(mid)[1]) <= length else (lo, mid - 1)
    listing, prompt = build(lo)
    if lo < 2 * k or len(prompt) > length:
        raise UserError(f"eval length {length} is too short for common_words")
    head_len = len(h.encode(CWE_TEMPLATE.split("{context}")[0]))
    at = len(prefix) + head_len + len(_numbered(h, listing))
    prompt = prompt[:at] + h.pad([], length - len(prompt)) + prompt[at:]  # pad after the list
    lead = h.encode(CWE_PREFIX.format(num_cw=k))
    budget = sum(len(h.encode(f" {i}. {w}")) for i, w in enumerate(common, 1)) + 4
    queries = []
    for w in common:
        wrong = h.distractors(rng, "word", decoys, set(common))
        options = [h.encode(f" {x}") for x in [w, *wrong]]
        queries.append(Query(lead, w, options, budget, lead + h.encode(" 1.")))
    sample = EvalSample("common_words", length, index, float("nan"), prompt, queries)
    sample.variant = "cwe"
    return sample
