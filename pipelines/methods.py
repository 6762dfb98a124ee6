"""The four data-construction methods, declared once. The driver and construction ask the
spec what to do; neither tests a method's name.

    policylong   screen + retrieve + verify with pi_k: actors follow the policy (broadcast)
    entropylong  the same steps with pi_0 for every stage (EntropyLong's static screening)
    nextlong     retrieve by the document's own chunks; no screening, no verification
    concat       random filler chunks only (plain concatenation)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodSpec:
    name: str
    # how the chunks placed before a seed document are found
    candidates: Literal["verified", "own_chunks", "none"]
    on_policy: bool  # scorers and verifiers load pi_k before stage k (else they keep pi_0)

    @property
    def screens(self) -> bool:
        """Steps 1 and 3 run: the method needs scorer and verifier actors, and a document
        without a verified positive gives no sample."""
        return self.candidates == "verified"

    @property
    def retrieves(self) -> bool:
        return self.candidates != "none"


METHOD_SPECS = {
    "policylong": MethodSpec("policylong", "verified", on_policy=True),
    "entropylong": MethodSpec("entropylong", "verified", on_policy=False),
    "nextlong": MethodSpec("nextlong", "own_chunks", on_policy=False),
    "concat": MethodSpec("concat", "none", on_policy=False),
}
METHODS = tuple(METHOD_SPECS)


def method_spec(name: str) -> MethodSpec:
    return METHOD_SPECS[name]  # config validation has already named the allowed values
