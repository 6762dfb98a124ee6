"""The data-construction methods, declared once. The driver and construction ask the spec what
to do; neither tests a method's name. Each follows its paper (README "Methods"):

    policylong         screen + retrieve + verify with pi_k (actors follow the policy);
                       positives far back, on-policy hard negatives and filler between, the
                       document last (PolicyLong, arXiv 2604.07809)
    policylong_static  the same assembly with pi_0 in every stage: the ablation that separates
                       being on-policy (policylong vs this) from hard negatives (this vs
                       entropylong)
    entropylong        screen + retrieve + verify with pi_0; S = [C_pi(1); ...; C_pi(m); D]:
                       verified contexts shuffled, the document last, no negative, no filler
                       (EntropyLong, arXiv 2510.02330, step 4; METHOD_NOTES §2.4)
    nextlong           no model: the document split into meta-chunks, each followed by its
                       top-k most similar chunks of other documents (NExtLong, arXiv 2501.12766
                       §3.1, App. D.1; METHOD_NOTES §3.1)
    concat             random chunks concatenated before the document (plain concatenation)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a sample is laid out (pipelines/assemble*.py):
#   far_back     contexts spread before the document, positives farthest (assemble.py)
#   units        [C_pi(1); ...; C_pi(m); D] units packed to seq_len (assemble_entropylong.py)
#   interleaved  meta-chunks each followed by their negatives (assemble_nextlong.py)
Layout = Literal["far_back", "units", "interleaved"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    # how the chunks placed with a seed document are found
    candidates: Literal["verified", "meta_chunks", "none"]
    on_policy: bool  # scorers and verifiers load pi_k before stage k (else they keep pi_0)
    layout: Layout  # how a sample is assembled from them (pipelines/steps/assemble.py)

    @property
    def screens(self) -> bool:
        """Steps 1 and 3 run: the method needs scorer and verifier actors, and a document
        without a verified positive gives no sample."""
        return self.candidates == "verified"

    @property
    def retrieves(self) -> bool:
        return self.candidates != "none"


METHOD_SPECS = {
    "policylong": MethodSpec("policylong", "verified", True, "far_back"),
    "policylong_static": MethodSpec("policylong_static", "verified", False, "far_back"),
    "entropylong": MethodSpec("entropylong", "verified", False, "units"),
    "nextlong": MethodSpec("nextlong", "meta_chunks", False, "interleaved"),
    "concat": MethodSpec("concat", "none", False, "far_back"),
}
METHODS = tuple(METHOD_SPECS)


def method_spec(name: str) -> MethodSpec:
    return METHOD_SPECS[name]  # config validation has already named the allowed values
