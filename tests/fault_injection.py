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
    (pipelines/train.py writes rank<r>.pid). Yields the list the killed pid lands in."""
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
