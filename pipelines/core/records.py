"""The records passed between the paper's steps, one per step boundary:

    screen   -> ScreenedDoc   a seed document, its entropies, the chosen positions and queries
    retrieve -> Candidate     one retrieved chunk for one document, with the positions it serves
    verify   -> Verdict       the chunk's entropy reduction r there, and its label
    assemble -> SampleRow     one training sample, as the sample log stores it
    commit   -> StageCounts   what a stage's construction did (to the sample log's manifest)
    stage    -> StageRecord   what the whole stage did (to its stage_manifest.json)

They cross Ray actor boundaries (pickled), so they hold plain lists and numbers.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

# A trained checkpoint carries the trainer's entropies of a fixed probe, which every actor that
# loads it must reproduce (cluster/weight_sync.py). Not the long-copy probe's probe.json.
SYNC_PROBE_FILE = "sync_probe.json"


def sync_probe_file(model_dir: Path) -> Path:
    """The checkpoint's weight-sync probe; checkpoints written before the rename call it
    probe.json (a model folder never holds the long-copy probe's file)."""
    new, legacy = Path(model_dir) / SYNC_PROBE_FILE, Path(model_dir) / "probe.json"
    return legacy if legacy.is_file() and not new.is_file() else new


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule, made once by the driver and passed down: its index, the
    length and RoPE base it trains at, and the policy version its scorers and verifiers hold
    (k for PolicyLong, 0 for the methods that keep pi_0)."""

    index: int
    seq_len: int
    rope_theta: float
    policy_version: int

    @classmethod
    def of(cls, stages, k: int, policy_version: int) -> Stage:
        """Stage k of a StagesSection."""
        return cls(k, stages.seq_lens[k], stages.rope_thetas[k], policy_version)


@dataclass
class ScreenedDoc:
    doc_id: str
    input_ids: list[int]
    positions: list[int]  # selected anchor positions, sorted
    position_entropies: list[float]  # H_t under the screening policy, at `positions`
    queries: list[str]  # the retrieval query around each position
    entropy_mean: float
    entropy_std: float
    threshold: float
    policy_version: int = 0
    entropy: np.ndarray | None = field(default=None, repr=False)  # [T] float32, entropy[0] NaN

    def table_row(self) -> dict:
        """The row of the stage's screen table (pipelines/steps/screen.py SCREEN_SCHEMA)."""
        return {
            "doc_id": self.doc_id,
            "n_tokens": len(self.input_ids),
            "entropy_mean": self.entropy_mean,
            "entropy_std": self.entropy_std,
            "threshold": self.threshold,
            "positions": self.positions,
            "position_entropies": self.position_entropies,
            "queries": self.queries,
            "policy_version": self.policy_version,
        }


@dataclass
class Candidate:
    chunk_id: str
    input_ids: list[int]
    similarity: float  # the best retrieval score over the positions it was retrieved for
    positions: list[int] = field(default_factory=list)  # positions of the document it serves


@dataclass
class Verdict:
    chunk_id: str
    r: float  # mean relative entropy reduction at `positions` (NaN: not verified)
    similarity: float
    label: str  # "positive" | "negative" | "discarded"
    positions: list[int]
    entropies_with: list[float] = field(default_factory=list)


@dataclass
class SampleRow:
    """One assembled sample: a row of the sample log (core/sample_log.py SAMPLE_SCHEMA)."""

    sample_id: str
    stage: int
    policy_version: int
    seed_doc_id: str
    positions: list[int]  # the anchors screening chose in the seed document
    input_ids: list[int]
    segments: list[dict]  # {kind, start, length, ...} spans of input_ids (assemble.py)

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class StageCounts:
    """What one stage's construction did, summed over its committed batches. Batches add to it
    from several threads, hence the lock."""

    documents: int = 0
    positions: int = 0
    candidates: int = 0
    positives: int = 0
    negatives: int = 0
    samples: int = 0
    tokens: int = 0
    skipped_no_dependency: int = 0
    skipped_short: int = 0  # NExtLong: synthesised documents shorter than seq_len (dropped)
    units_dropped: int = 0  # EntropyLong: units left at a batch's end, too few for a sample
    # positives' anchors in committed samples, and those whose token the sample holds (1.0)
    anchors: int = 0
    anchors_in_sample: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def merge(self, other: StageCounts) -> None:
        self.add(**other.to_dict())

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}


@dataclass
class WeightPayload:
    """A policy sent in memory rather than as a checkpoint folder (HF backends only): its HF
    config (a stage may have raised the RoPE base) and its tensors, as torch tensors or in the
    object store's NumPy wire format (cluster/transport_object_store.py)."""

    config: dict
    state: dict
    wire: str = "torch"  # "torch" | "numpy"


@dataclass
class StageRecord:
    """What a stage did, beyond its Stage: the body of its stage_manifest.json (driver's
    write_stage_manifest adds the Stage's fields and the timings)."""

    policy_version_used: int  # the policy the stage's scorers and verifiers held
    model_dir: str | None  # pi_{k+1}; None when the run only constructs
    construction: dict[str, int]  # StageCounts.to_dict()
    broadcast: dict | None  # the sync of pi_k before the stage (cluster/weight_sync.py)
    actor_busy_s: dict[str, float]  # per policy actor, seconds busy in this stage
    dataset: str = ""  # the exported dataset folder (driver/export_dataset.py)
