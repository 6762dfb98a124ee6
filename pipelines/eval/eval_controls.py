"""Calibration controls for the eval suite: scorers that must score chance on every task.

A task whose score a shortcut can earn measures the shortcut. The one this suite guards against
is "prefer what the context contains": a model that copies, or a random-init model whose tied
embeddings echo its input, ranks an option by how much of it the prompt holds. `ContextBag` is
that shortcut in its purest form -- it rates an option only by how often its tokens occur
anywhere in the prompt, with no notion of order, keys or questions -- so a suite on which it
scores chance has closed the shortcut (tests/test_eval_controls.py measures it per task).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipelines.eval.eval_tasks import EvalSample
from pipelines.eval.evaluate import gold_credit


class ContextBag:
    """Rates an option by the mean count, over its tokens, of that token in the prompt."""

    def option_scores(self, sample: EvalSample) -> list[list[float]]:
        bag = Counter(sample.prompt_ids)
        return [
            [float(np.mean([bag[t] for t in option])) for option in q.options]
            for q in sample.queries
            if q.options
        ]

    def likelihood(self, sample: EvalSample) -> float:
        """The sample's likelihood score as pipelines/eval/evaluate.py computes it for a model."""
        return float(np.mean([gold_credit(s) for s in self.option_scores(sample)]))


@dataclass
class ChanceCheck:
    """A mean score against chance, with its standard error over samples."""

    mean: float
    stderr: float
    chance: float
    n: int

    @classmethod
    def of(cls, scores, options: int) -> ChanceCheck:
        x = np.asarray(scores, dtype=float)
        return cls(float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))), 1 / options, len(x))

    @property
    def z(self) -> float:
        """Distance from chance in standard errors (stderr floored at a 1-sample binomial's)."""
        floor = np.sqrt(self.chance * (1 - self.chance) / self.n)
        return (self.mean - self.chance) / max(self.stderr, floor)

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.stderr:.3f} (chance {self.chance:.2f}, n {self.n})"
