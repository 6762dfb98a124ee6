"""`plan`'s GPU split (pipelines/driver/plan_split.py): the proposed split is the best one (checked
by an
exhaustive search written separately here), never slower than the profile's fixed split on the
same GPUs, never faster than every GPU busy all the time; the paper profile adopts it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_plan import PAPER, QWEN_SHAPE

from pipelines.core.config import load_config
from pipelines.driver.plan import Assumptions, plan
from pipelines.driver.plan_split import Split, best_split, propose, run_wall_h

ONE_GPU = {"scorer": 1.0, "verifier": 1.0, "trainer": 1.0}
pytestmark = pytest.mark.timeout(120)


def brute_force_wall(hours: np.ndarray, gpus: int) -> float:
    """The least run wall time over every split with one actor a role, by plain enumeration."""
    best = np.inf
    for s, v in itertools.product(range(1, gpus), repeat=2):
        t = gpus - s - v
        if t >= 1:
            best = min(best, sum(max(h[0] / s, h[1] / v, h[2] / t) for h in hours))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_proposed_split_is_the_best_one(seed):
    rng = np.random.default_rng(seed)
    hours = rng.gamma(1.0, 10.0, size=(int(rng.integers(1, 4)), 3))  # stages x roles
    gpus = int(rng.integers(3, 24))
    split = best_split(hours, gpus, ONE_GPU)
    assert split.scorer + split.verifier + split.trainer <= gpus
    assert run_wall_h(hours, split) == pytest.approx(brute_force_wall(hours, gpus), rel=1e-9)


@pytest.mark.parametrize("gpus", [0, 16, 48, 128])  # 0: the profile's own 48
@pytest.mark.parametrize("doc_tokens", [0.0, 2048.0])
def test_never_slower_than_the_profile_and_never_below_the_bound(gpus, doc_tokens):
    a = Assumptions(doc_tokens=doc_tokens, gpus=gpus, switch_s=60.0)
    s = plan(load_config(PAPER), a, QWEN_SHAPE)["split"]
    assert s["gpus"] == (gpus or 48)
    assert s["proposed"]["wall_h"] <= s["profile"]["wall_h"] + 1e-12
    assert s["proposed"]["wall_h"] >= s["lower_bound_h"] - 1e-12
    used = s["proposed"]["scorer"] + s["proposed"]["verifier"] + s["proposed"]["trainer"]
    assert used <= s["gpus"]
    # time-sharing: the bound plus two 60 s switches in each of the 3 stages
    assert s["shared_wall_h"] == pytest.approx(s["lower_bound_h"] + 3 * 2 * 60 / 3600)


def test_the_paper_profile_runs_the_split_plan_proposes_for_its_setting():
    """docs/scaling.md's setting (documents of 2,048 tokens): the shipped counts are the best
    split of the profile's GPUs, so a plan on it proposes no change."""
    cfg = load_config(PAPER)
    s = plan(cfg, Assumptions(doc_tokens=2048.0), QWEN_SHAPE)["split"]
    r = cfg.resources
    shipped = Split(r.scorer.count, r.verifier.count, r.trainer.count)
    assert (s["proposed"]["scorer"], s["proposed"]["verifier"], s["proposed"]["trainer"]) == (
        shipped.scorer, shipped.verifier, shipped.trainer,
    )  # fmt: skip


def test_a_method_that_does_not_screen_gives_every_gpu_to_training():
    cfg = load_config(PAPER, ["stages.method=concat"])
    s = plan(cfg, Assumptions(), QWEN_SHAPE)["split"]
    assert (s["proposed"]["scorer"], s["proposed"]["verifier"]) == (0, 0)
    assert s["proposed"]["trainer"] == 48


def test_no_split_without_gpus():
    hours = np.ones((2, 3))
    out = propose([], True, Split(1, 1, 2), {"scorer": 0, "verifier": 0, "trainer": 0}, 0, 60)
    assert out["proposed"] is None and "no role asks for a GPU" in out["why"]
    assert best_split(hours, 2, ONE_GPU) is None  # three roles with work, two GPUs
