"""The needle-in-a-haystack tasks (RULER's eight niah variants, folded into four task names).

    niah_single      RULER niah_single_1/2/3 by sample index (noise haystack + number; held-out
                     text + number; held-out text + uuid), plus options - 1 needles of the same
                     kind under other keys: RULER's single needle is the only number in its
                     haystack, so copying any number would find it
    niah_multikey    RULER niah_multikey_1/2/3 by index: four keys in held-out text; a haystack
                     made only of needles (word keys -> numbers); the same with uuid -> uuid
    niah_multivalue  four values under one key, plus options - 1 needles under other keys (RULER's
                     has none); every value is an answer
    niah_multiquery  four keys, all asked for in one question (RULER's)

Templates, needle sentence, singular edit and answer prefixes are RULER's (eval_haystack). The
likelihood options follow the answer prefix plus ":", the needle's own wording; exact match
continues RULER's prefix as it is. Multi-query asks all keys in one prompt and one prefix (exact
match), and scores each key's options after that key's singular prefix.
"""

from __future__ import annotations

from pipelines.eval.eval_haystack import (
    NEEDLE,
    NIAH_PREFIX,
    NIAH_TEMPLATE,
    EvalSample,
    Haystack,
    Query,
    singular,
)

NEEDLES = 4  # needles per multi-needle task (RULER: 4)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def _join(keys: list[str]) -> str:
    return ", ".join(keys[:-1]) + ", and " + keys[-1] if len(keys) > 1 else keys[0]


def _lines(h: Haystack, rng, hay_len: int, make_line) -> tuple[list[int], list[int], list[str]]:
    """A haystack of whole lines (make_line(rng) -> (text, value or None)) padded to hay_len:
    (tokens, line starts, the values in it)."""
    hay, bounds, values = [], [0], []
    while True:
        text, value = make_line(rng)
        ids = h.encode(text + "\n")
        if len(hay) + len(ids) > hay_len:
            break
        hay += ids
        bounds.append(len(hay))
        values += [value] if value is not None else []
    return h.pad(hay, hay_len), bounds, values


def _niah(h: Haystack, rng, length, index, depth, *, kind, key_kind, hay_type, keys, values,
          gold, asked) -> EvalSample:  # fmt: skip
    """needles "for keys[j] is: values[j]" (gold: the answer needles, the first at `depth`);
    `asked` the distinct keys the question names; hay_type: text | noise | needle."""
    plural = f"{kind}s"
    one = len(gold) == 1
    edit = singular if one else (lambda s: s)
    query = _join(asked)
    head_text, question_text = NIAH_TEMPLATE.split("{context}")
    head = h.encode(edit(head_text).format(kind=kind if one else plural))
    question = h.encode(edit(question_text).format(kind=kind if one else plural, query=query))
    sep = " " if hay_type == "text" else ""
    end = "" if hay_type == "text" else "\n"
    value_ids = [h.encode(f" {v}") for v in values]
    needles = [h.encode(sep + NEEDLE.format(kind=plural, key=k, value=v) + end)
               for k, v in zip(keys, values, strict=True)]  # fmt: skip
    hay_len = h.hay_room(length, len(head) + len(question) + sum(map(len, needles)))
    in_hay: list[str] = []
    if hay_type == "text":
        hay, bounds = h.stream_hay(rng, hay_len), None
    else:
        hay, bounds, in_hay = _lines(h, rng, hay_len, _filler(h, hay_type, kind, key_kind, plural,
                                                             set(keys), set(values)))  # fmt: skip
    depths = h.spread(rng, depth, len(needles))
    first = gold[0]
    depths[0], depths[first] = depths[first], depths[0]
    placed = h.assemble(hay, head, needles, depths, question, bounds=bounds)
    lead = h.encode(edit(NIAH_PREFIX).format(kind=kind if one else plural, query=query))
    queries = []
    for j in gold:  # wrong: values under other keys (multi-value: never the key's own values)
        right = {values[i] for i in range(len(values)) if keys[i] == keys[j]}
        wrong = h.distractors(rng, kind, [*values, *in_hay], right)
        option_lead = lead
        if len(set(asked)) > 1:  # multi-query: each key's options after its own prefix
            option_lead = h.encode(singular(NIAH_PREFIX).format(kind=kind, query=keys[j]))
        budget = (len(value_ids[j]) + 4) if one else sum(len(value_ids[i]) + 3 for i in gold) + 4
        queries.append(Query(lead, values[j], [value_ids[j], *(h.encode(f" {v}") for v in wrong)],
                             budget, option_lead + h.encode(":")))  # fmt: skip
    sample = EvalSample("", length, index, depth, placed.prompt, queries)
    return h.record(sample, gold, placed, needles)


def _filler(h: Haystack, hay_type, kind, key_kind, plural, keys: set, values: set):
    """make_line for _lines: RULER's noise sentence, or a needle under a fresh key."""
    if hay_type == "noise":
        return lambda rng: (NOISE, None)

    def needle(rng):
        key = h.values(rng, key_kind, 1, keys)[0] if key_kind == "uuid" else h.key(rng)
        while key in keys:
            key = h.key(rng)
        value = h.values(rng, kind, 1, values)[0]
        return NEEDLE.format(kind=plural, key=key, value=value), value

    return needle


def _keys(h: Haystack, rng, kind: str, n: int) -> list[str]:
    if kind == "uuid":
        return h.values(rng, "uuid", n)
    out: list[str] = []
    while len(out) < n:
        k = h.key(rng)
        out += [k] if k not in out else []
    return out


def niah_single(h: Haystack, rng, length, index, depth) -> EvalSample:
    variant, hay_type, kind = (("niah_single_1", "noise", "number"),
                               ("niah_single_2", "text", "number"),
                               ("niah_single_3", "text", "uuid"))[index % 3]  # fmt: skip
    keys = _keys(h, rng, "word", h.options)
    values = h.values(rng, kind, h.options)
    s = _niah(h, rng, length, index, depth, kind=kind, key_kind="word", hay_type=hay_type,
              keys=keys, values=values, gold=[0], asked=keys[:1])  # fmt: skip
    s.task, s.variant = "niah_single", variant
    return s


def niah_multikey(h: Haystack, rng, length, index, depth) -> EvalSample:
    variant, hay_type, key_kind, kind, n = (
        ("niah_multikey_1", "text", "word", "number", NEEDLES),
        ("niah_multikey_2", "needle", "word", "number", 1),
        ("niah_multikey_3", "needle", "uuid", "uuid", 1),
    )[index % 3]
    keys, values = _keys(h, rng, key_kind, n), h.values(rng, kind, n)
    s = _niah(h, rng, length, index, depth, kind=kind, key_kind=key_kind, hay_type=hay_type,
              keys=keys, values=values, gold=[0], asked=keys[:1])  # fmt: skip
    s.task, s.variant = "niah_multikey", variant
    return s


def niah_multivalue(h: Haystack, rng, length, index, depth) -> EvalSample:
    others = _keys(h, rng, "word", h.options)
    key, others = others[0], others[1:]
    keys = [key] * NEEDLES + others
    values = h.values(rng, "number", len(keys))
    s = _niah(h, rng, length, index, depth, kind="number", key_kind="word", hay_type="text",
              keys=keys, values=values, gold=list(range(NEEDLES)), asked=[key])  # fmt: skip
    s.task, s.variant = "niah_multivalue", "niah_multivalue"
    return s


def niah_multiquery(h: Haystack, rng, length, index, depth) -> EvalSample:
    keys = _keys(h, rng, "word", NEEDLES)
    values = h.values(rng, "number", NEEDLES)
    s = _niah(h, rng, length, index, depth, kind="number", key_kind="word", hay_type="text",
              keys=keys, values=values, gold=list(range(NEEDLES)), asked=keys)  # fmt: skip
    s.task, s.variant = "niah_multiquery", "niah_multiquery"
    return s
