"""Faults injected the way a preemptible cluster injects them: a process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def _logged_steps(train_dir: Path) -> list[int]:
    log = train_dir / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(x)["step"] for x in lines if x.endswith("}")]  # not a partial line


@contextmanager
def train_worker_killed_at_step(train_dir: Path, step: int, rank: int = 1):
    """While the block runs: once rank 0 has logged `step`, SIGKILL the process of `rank`
    (pipelines/steps/train.py writes rank<r>.pid). Yields the list the killed pid lands in."""
    done, killed = threading.Event(), []

    def watch() -> None:
        pid_file = train_dir / f"rank{rank}.pid"
        while not done.is_set():
            steps = _logged_steps(train_dir)
            if steps and max(steps) >= step and pid_file.exists():
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, name="train-worker-killer")
    watcher.start()
    try:
        yield killed
    finally:
        done.set()
        watcher.join()


@contextmanager
def scorer_killed_mid_stage(monkeypatch, policy_version: int, at_call: int = 2):
    """While the block runs: just before the `at_call`-th screening call made with
    `policy_version` (i.e. in that stage), kill that call's scorer actor (its process dies and
    Ray restarts it, as a preempted node's would). Yields {"killed_pid", "docs_after"}: the pid
    killed and the doc ids of every batch screened from that call on."""
    import itertools

    import ray

    from pipelines.driver import construct

    real, calls, lock = construct.screen_batch, itertools.count(1), threading.Lock()
    record: dict = {"killed_pid": None, "docs_after": []}

    def screen_batch(scorer, docs, tokenizer, cfg, version):
        if version == policy_version:
            with lock:
                n = next(calls)
                if n == at_call:
                    record["killed_pid"] = ray.get(scorer.pid.remote())
                    ray.kill(scorer, no_restart=False)
                if n >= at_call:
                    record["docs_after"] += [d["doc_id"] for d in docs]
        return real(scorer, docs, tokenizer, cfg, version)

    monkeypatch.setattr(construct, "screen_batch", screen_batch)
    yield record


@contextmanager
def construction_held_until_trained(monkeypatch, train_dir: Path, stage: int, wait_s=300.0):
    """While the block runs: in `stage`, once enough samples are committed for a first train step
    (2), every further commit waits until a trainer has logged a step (or `wait_s` passed), as a
    slow construction would. So "training consumed samples before construction finished" holds
    when samples stream to the trainers, and fails (after the wait) when they do not, on any
    machine: without the hold, this run's construction ends before the trainers have started."""
    from pipelines.driver import construct

    real, committed = construct._commit, [0]

    def trained() -> bool:
        return any(f.stat().st_size for f in train_dir.glob("rank*.jsonl"))

    def commit(ctx, log, result, room):
        if ctx.stage.index == stage and committed[0] >= 2:
            deadline = time.monotonic() + wait_s
            while not trained() and time.monotonic() < deadline:
                time.sleep(0.2)
        n = real(ctx, log, result, room)
        committed[0] += n if ctx.stage.index == stage else 0
        return n

    monkeypatch.setattr(construct, "_commit", commit)
    yield
