"""The eval suite's wrong options come from the prompt (issue 27 item 1), checked on prompts built
from a hand-written held-out text with a real tokenizer (SmolLM2-135M's): no world needed.

A wrong option that never occurs in the prompt hands the likelihood score to any model that
prefers text it has seen; these tests fail when a task's distractors are fresh values again."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from pipelines.eval.eval_controls import ContextBag
from pipelines.eval.eval_haystack import EvalSample, Query
from pipelines.eval.eval_tasks import TASKS, TaskBuilder
from pipelines.eval.evaluate import gold_credit
from pipelines.world.tokenizer import load_tokenizer

TEXT = (
    "The harbour master counted seven barrels of salted herring before the evening storm. "
    "Nobody believed the lighthouse keeper when he described a silver comet above the cliffs. "
    "Merchants argued about copper prices while children chased gulls along the wooden pier. "
    "A quiet tailor mended sails for fishermen who could never afford a proper carpenter. "
    "Lanterns swayed in the tavern as sailors traded stories of whales, pirates and treasure. "
    "Every morning the baker delivered warm bread to the monastery beyond the northern hills. "
    "The captain's daughter studied maps, compasses and charts of distant tropical islands. "
)
N = 6  # samples per task: two of each RULER variant


@pytest.fixture(scope="module")
def builder(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    stream = tok(TEXT * 40, add_special_tokens=False)["input_ids"]
    return TaskBuilder(tok, stream, re.findall(r"\b[a-z]+\b", TEXT.lower()), options=4, seed=0)


def _decode(builder, ids) -> str:
    return builder.tok.decode(ids)


@pytest.mark.timeout(300)
def test_distractors_are_strings_of_the_prompt_and_fresh_values_only_fill_in(builder):
    rng = np.random.default_rng(0)
    seen = ["1111111", "2222222", "3333333", "4444444", "5555555"]
    picked = builder.distractors(rng, "number", seen, {"1111111"})
    assert len(picked) == 3 and set(picked) <= set(seen) - {"1111111"}
    short = builder.distractors(rng, "number", ["2222222", "2222222"], set())
    assert short[0] == "2222222" and len(set(short)) == 3
    assert all(re.fullmatch(r"\d{7}", v) for v in short[1:])  # fresh ones: same kind


@pytest.mark.timeout(300)
@pytest.mark.parametrize("task", [t for t in TASKS if t != "common_words"])
def test_every_wrong_option_is_a_needle_value_or_chain_of_the_same_prompt(builder, task):
    for i in range(N):
        s = builder.sample(task, 512, i, N)
        prompt = _decode(builder, s.prompt_ids)
        for q in (q for q in s.queries if q.options):
            wrong = [_decode(builder, o).strip() for o in q.options[1:]]
            assert len(set(wrong)) == len(wrong) and q.answer not in wrong
            for w in wrong:
                if task == "variable_tracking":  # a whole other chain: each name assigned
                    assert all(f"VAR {name} =" in prompt for name in w.split()), (w, prompt)
                else:  # a value of a needle under another key: "... for <key> is: <value>."
                    asked = re.search(r"for (\S+) mentioned", _decode(builder, q.option_lead))
                    key = re.search(rf"for (\S+) is: {re.escape(w)}\.", prompt)
                    assert key and key[1] != asked[1], (w, s.variant)


@pytest.mark.timeout(300)
def test_common_words_decoys_are_in_the_asked_list_and_as_frequent_in_the_prompt(builder):
    for i in range(N):
        s = builder.sample("common_words", 512, i, N)
        prompt = _decode(builder, s.prompt_ids)
        asked = prompt.rsplit("Below is a numbered list of words.", 1)[1]
        in_list, in_prompt = (Counter(re.findall(r"\d+\. ([a-z]+)", t)) for t in (asked, prompt))
        for q in s.queries:
            wrong = [_decode(builder, o).strip() for o in q.options[1:]]
            assert in_list[q.answer] == 6 and all(in_list[w] == 1 for w in wrong)
            # only counting within the asked list tells them apart
            assert all(in_prompt[w] == in_prompt[q.answer] for w in wrong), (in_prompt, wrong)


@pytest.mark.timeout(60)
def test_gold_credit_and_the_context_bag_on_hand_made_samples():
    assert gold_credit([0.5, 0.1, 0.2]) == 1.0
    assert gold_credit([0.1, 0.5, 0.2]) == 0.0
    assert gold_credit([0.5, 0.5, 0.5, 0.1]) == pytest.approx(1 / 3)  # a three-way tie
    bag = ContextBag()
    query = Query([9], "x", [[5], [7], [8]], 4)
    seen_more = EvalSample("t", 6, 0, 0.0, [5, 5, 5, 7, 8, 9], [query])
    assert bag.likelihood(seen_more) == 1.0  # the gold occurs more often: the bag finds it
    balanced = EvalSample("t", 6, 0, 0.0, [5, 7, 8, 5, 7, 8], [query])
    assert bag.likelihood(balanced) == pytest.approx(1 / 3)  # every option as often: chance
