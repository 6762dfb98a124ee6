"""RULER-style long-context tasks, built from held-out corpus text at exact token lengths.

RULER (Hsieh et al., 2024) tests what a long-context model can find and use in its window with
synthetic tasks inserted into filler text. Its 13 tasks less the two QA tasks (SQuAD, HotpotQA:
downloads) and fwe, with RULER's templates, needle sentence and answer prefixes
(pipelines/eval/eval_haystack.py), folded into six task names:

    niah_single        RULER niah_single_1/2/3 (+ same-kind distractor needles)   eval_niah.py
    niah_multikey      RULER niah_multikey_1/2/3                                  eval_niah.py
    niah_multivalue    RULER niah_multivalue (+ distractor needles)                eval_niah.py
    niah_multiquery    RULER niah_multiquery                                      eval_niah.py
    variable_tracking  RULER vt, 1 hop, not 4 (+ distractor chains)               eval_trace.py
    common_words       RULER cwe below 4K, 3 answers (+ decoys balanced by its example)

RULER's essay haystack (Paul Graham essays, a download) is replaced by held-out corpus text;
its noise and needle haystacks are RULER's own. Every sample is token ids: BOS (EOS where the
tokenizer has none, as in pretraining) + the task's prompt, exactly `length` tokens; each
question has a lead, RULER's answer prefix, that the model continues. The gold needle of sample i
sits at depth i / (n - 1) of the haystack (its line start, or the nearest sentence end within
SNAP tokens before it).

Two scores per query (pipelines/eval/evaluate.py): exact match of the greedy continuation (RULER's
string_match_all) and a likelihood score, whether the gold answer has the highest mean
log-probability among `options` answers of the same kind. The wrong options come from the same
prompt (eval_haystack.Haystack.distractors): a model that prefers any string it has seen scores
chance (1 / options); so does a scorer that counts how often an option's tokens occur in the
prompt (pipelines/eval/eval_controls.py, tests/test_eval_controls.py).

Samples depend only on the tokenizer, the held-out stream, the task, the length, the index and
the seed: every checkpoint sees identical inputs.
"""

from __future__ import annotations

import numpy as np

from pipelines.core.errors import UserError
from pipelines.eval import eval_niah, eval_trace
from pipelines.eval.eval_haystack import SNAP, EvalSample, Haystack, Query

__all__ = ["SNAP", "TASKS", "EvalSample", "Query", "TaskBuilder"]

BUILDERS = {
    "niah_single": eval_niah.niah_single,
    "niah_multikey": eval_niah.niah_multikey,
    "niah_multivalue": eval_niah.niah_multivalue,
    "niah_multiquery": eval_niah.niah_multiquery,
    "variable_tracking": eval_trace.variable_tracking,
    "common_words": eval_trace.common_words,
}
TASKS = tuple(BUILDERS)


class TaskBuilder(Haystack):
    """Builds samples of every task from one tokenizer, held-out token stream and word list."""

    def sample(self, task: str, length: int, index: int, n: int) -> EvalSample:
        if task not in TASKS:
            raise UserError(f"unknown eval task '{task}': choose from {', '.join(TASKS)}")
        rng = np.random.default_rng([self.seed, TASKS.index(task), length, index])
        depth = index / (n - 1) if n > 1 else 0.5
        return BUILDERS[task](self, rng, length, index, depth)
