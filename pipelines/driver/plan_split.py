"""Which split of a cluster's GPUs among scorers, verifiers and trainers finishes a run soonest.

Construction (scorers, verifiers) and training overlap within a stage, so a stage lasts about as
long as its busiest role: with GPU-hours h_r of role r on n_r actors of g_r GPUs each,

    wall_k(n) = max_r  h_r,k / n_r            (pipelines/driver/plan.py, measured 1.15x on tiny
    runs)
    wall(n)   = sum_k wall_k(n)               one fleet for the whole run, as the driver keeps it

The split minimises wall(n) over every whole number of actors with sum_r n_r g_r <= G (an
exhaustive search: a few thousand GPUs at most, vectorised). Its lower bound is every GPU busy
all the time, sum_{r,k} h_r,k / G; a fixed split stays above it whenever the roles' shares
change between stages (training grows with seq_len while construction shrinks).

Time-sharing, as verl's hybrid engine colocates rollout and training: every GPU constructs, then
every GPU trains, then the new weights go back into the inference engine. No GPU idles, but each
stage pays two switches (weights moved and the engine woken or put to sleep), and construction no
longer overlaps training:

    wall_shared = sum_k (sum_r h_r,k) / G + 2 * switch_s per stage
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ROLES = ("scorer", "verifier", "trainer")


@dataclass(frozen=True)
class Split:
    """Actor counts per role (each actor holds its role's resources.<role>.gpus)."""

    scorer: int
    verifier: int
    trainer: int

    def gpus(self, per_actor: dict[str, float]) -> float:
        return sum(getattr(self, r) * per_actor[r] for r in ROLES)


def role_hours(stages: list[dict], screens: bool) -> np.ndarray:
    """GPU-hours per stage and role, shape (stages, 3); a method that does not screen has none."""
    rows = [[s["scorer_gpu_h"], s["verifier_gpu_h"], s["trainer_gpu_h"]] for s in stages]
    h = np.array(rows, dtype=float).reshape(-1, 3)
    if not screens:
        h[:, :2] = 0.0
    return h


def run_wall_h(hours: np.ndarray, split: Split) -> float:
    counts = np.array([split.scorer, split.verifier, split.trainer], dtype=float)
    busy = hours > 0
    per_role = np.divide(hours, counts, out=np.zeros_like(hours), where=busy & (counts > 0))
    per_role[busy & (counts == 0)] = np.inf  # work with no actor to do it never ends
    return float(per_role.max(axis=1).sum())


def best_split(hours: np.ndarray, gpus: float, per_actor: dict[str, float]) -> Split | None:
    """The split of at most `gpus` GPUs with the least run wall time; None if none fits (every
    role with work needs one actor). Ties go to fewer GPUs, then to more trainers."""
    g = np.array([per_actor[r] for r in ROLES], dtype=float)
    need = hours.sum(axis=0) > 0
    top = [int(gpus // g[i]) if need[i] else 0 for i in range(3)]
    best, best_key = None, None
    for s in range(top[0] + 1):  # one row of candidates per scorer count: memory O(G)
        v = np.arange(top[1] + 1, dtype=float)
        t = np.zeros_like(v)  # trainers take what is left (none when nothing trains)
        if need[2]:
            t = np.floor(np.round((gpus - s * g[0] - v * g[1]) / g[2], 9))
        counts = np.stack([np.full_like(v, s), v, t], axis=1)
        ok = (counts[:, need] >= 1).all(axis=1) & (t >= 0)
        if not ok.any():
            continue
        counts = counts[ok]
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(hours[None] > 0, hours[None] / counts[:, None, :], 0.0)
        wall = np.round(per.max(axis=2).sum(axis=1), 9)
        i = np.lexsort((-counts[:, 2], counts @ g, wall))[0]
        key = (wall[i], float(counts[i] @ g), -counts[i, 2])
        if best_key is None or key < best_key:
            best, best_key = counts[i], key
    return None if best is None else Split(*(int(x) for x in best))


def shared_wall_h(hours: np.ndarray, gpus: float, switch_s: float) -> float:
    """Every GPU constructs then trains, each stage: no idle GPU, two switches per stage."""
    return float(hours.sum() / gpus + len(hours) * 2 * switch_s / 3600)


def scaled(profile: Split, per_actor: dict[str, float], gpus: float) -> Split:
    """The profile's proportions on `gpus` GPUs (rounded down, at least one actor a role)."""
    have = profile.gpus(per_actor)
    if not have or have == gpus:
        return profile
    n = {
        r: max(1, int(getattr(profile, r) * gpus / have)) if getattr(profile, r) else 0
        for r in ROLES
    }
    return Split(**n)


def propose(
    stages: list[dict], screens: bool, profile: Split, per_actor: dict, gpus: float, switch_s: float
) -> dict:
    """The profile's fixed split (its proportions scaled to `gpus`) against the best split of
    `gpus` GPUs and against time-sharing them."""
    hours = role_hours(stages, screens)
    fixed = scaled(profile, per_actor, gpus)
    out = {
        "gpus": gpus,
        "gpus_per_actor": per_actor,
        "lower_bound_h": float(hours.sum() / gpus) if gpus else None,
        "profile": asdict(fixed) | {"wall_h": run_wall_h(hours, fixed)},
        "switch_s": switch_s,
    }
    if not any(per_actor[r] > 0 for r in ROLES):
        return out | {"proposed": None, "shared_wall_h": None, "why": "no role asks for a GPU"}
    if any(per_actor[r] <= 0 for r in ROLES if hours[:, ROLES.index(r)].sum() > 0):
        return out | {"proposed": None, "shared_wall_h": None, "why": "a role with work has no GPU"}
    best = best_split(hours, gpus, per_actor)
    if best is None:
        return out | {
            "proposed": None,
            "shared_wall_h": None,
            "why": "too few GPUs for one actor per role",
        }
    stage_walls = [run_wall_h(hours[k : k + 1], best) for k in range(len(hours))]
    return out | {
        "proposed": asdict(best) | {"wall_h": run_wall_h(hours, best), "stage_wall_h": stage_walls},
        "shared_wall_h": shared_wall_h(hours, gpus, switch_s),
    }


def describe(p: dict) -> list[str]:
    """The lines `plan` prints about the split."""
    prof = p["profile"]
    fixed = f"{prof['scorer']}/{prof['verifier']}/{prof['trainer']}"
    if p.get("proposed") is None:
        return [f"GPU split: none proposed ({p.get('why', 'no GPUs')}); profile {fixed}"]
    best = p["proposed"]
    keys = " ".join(f"resources.{r}.count={best[r]}" for r in ROLES)
    gain = prof["wall_h"] / best["wall_h"] if best["wall_h"] else float("nan")
    shared = p["shared_wall_h"]
    verdict = (
        "time-sharing would beat the best fixed split"
        if shared < best["wall_h"]
        else "the best fixed split beats time-sharing"
    )
    head = (
        f"GPU split of {p['gpus']:g} GPUs (scorer/verifier/trainer actors): "
        f"the profile's {fixed} -> {prof['wall_h']:.2f} h; "
    )
    if all(best[r] == prof[r] for r in ROLES):
        head += "already the best split"
    else:
        head += (
            f"proposed {best['scorer']}/{best['verifier']}/{best['trainer']} -> "
            f"{best['wall_h']:.2f} h ({gain:.2f}x faster; set {keys})"
        )
    return [
        head,
        f"  every GPU busy all the time: {p['lower_bound_h']:.2f} h; time-shared (all GPUs "
        f"construct then train, 2 switches of {p['switch_s']:g} s per stage): {shared:.2f} h: "
        f"{verdict}",
    ]
