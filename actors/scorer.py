"""EntropyScorer: a Ray actor holding one policy backend (HF or vLLM) and the chunked entropy math.

One engine per actor, started once and reused across stages; weights, version, probe and busy time
come from actors/policy_holder.py.

    scorers = create_scorers(cfg, model_dir)  # pipelines/driver/workers.py: an ActorGroup
    [scored] = ray.get(scorers[0].score.remote([{"doc_id": "a", "input_ids": [...]}]))
    # positions and queries from the entropies: pipelines/steps/screen.py (screen_batch)
"""

from __future__ import annotations

import numpy as np

from actors.policy_holder import PolicyHolder


class EntropyScorer(PolicyHolder):
    """Exact per-token entropies of documents under the currently loaded policy."""

    def score(self, docs: list[dict]) -> list[dict]:
        """[{doc_id, input_ids}] -> [{doc_id, entropy}]: float32 [T], entropy[0] = NaN."""
        ents = self.timed(self.entropies, [list(d["input_ids"]) for d in docs])
        return [
            {"doc_id": d["doc_id"], "entropy": e.numpy().astype(np.float32)}
            for d, e in zip(docs, ents, strict=True)
        ]
