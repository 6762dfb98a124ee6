"""Verifier: a Ray actor that checks whether a retrieved chunk really helps the current policy.

Step 3 of the method. For a candidate chunk c retrieved for positions T_c of document d:

    H_t(c) = H(x_t | c ⊕ d_<t)                    at exactly the positions t in T_c
    r      = mean over t in T_c of (H_t - H_t(c)) / H_t

r >= tau_pos: positive (a verified long-range dependency); r <= tau_neg: on-policy hard negative
(looked relevant to the retriever, gives the current policy nothing); otherwise discarded.
Only the hidden states at the needed positions go through the lm_head.
"""

from __future__ import annotations

from pathlib import Path

import torch

from actors.policy_holder import PolicyHolder, PolicySpec
from pipelines.core.config import VerifySection
from pipelines.core.records import Candidate, ScreenedDoc, Verdict


def label_of(r: float, tau_pos: float, tau_neg: float) -> str:
    if r >= tau_pos:
        return "positive"
    if r <= tau_neg:
        return "negative"
    return "discarded"


class Verifier(PolicyHolder):
    """Entropy reduction of candidate chunks under the currently loaded policy."""

    def __init__(
        self, spec: PolicySpec, verify: VerifySection, model_dir: str | Path, version: int = 0
    ):
        super().__init__(spec, model_dir, version)
        self.settings = verify

    def verify(self, doc: ScreenedDoc, candidates: list[Candidate]) -> list[Verdict]:
        """One Verdict per candidate, at the document positions the candidate was retrieved for
        (a subset of doc.positions, whose screening entropies are the baseline)."""
        return self.timed(self._verify, doc, candidates)

    def verify_many(self, items: list[tuple[ScreenedDoc, list[Candidate]]]) -> list[list[Verdict]]:
        """verify() for every (doc, candidates) pair of a batch: one actor call per batch."""
        return [self.verify(doc, cands) if cands else [] for doc, cands in items]

    def _verify(self, doc: ScreenedDoc, candidates: list[Candidate]) -> list[Verdict]:
        base = dict(zip(doc.positions, doc.position_entropies, strict=True))
        v, out = self.settings, []
        for start in range(0, len(candidates), v.batch_candidates):
            group = candidates[start : start + v.batch_candidates]
            # Only the prefix of d up to the last asked position is needed.
            seqs = [list(c.input_ids) + doc.input_ids[: max(c.positions) + 1] for c in group]
            asked = [[len(c.input_ids) + t for t in c.positions] for c in group]
            for cand, with_c in zip(group, self.entropies_at(seqs, asked), strict=True):
                h0 = torch.tensor([base[t] for t in cand.positions])
                r = float(((h0 - with_c) / h0.clamp(min=1e-6)).mean())
                label = label_of(r, v.tau_pos, v.tau_neg)
                out.append(
                    Verdict(
                        cand.chunk_id, r, float(cand.similarity), label, list(cand.positions),
                        with_c.tolist(),
                    )
                )  # fmt: skip
        return out
