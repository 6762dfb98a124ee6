"""A Ray head of its own for tests that need a cluster beside the suite's Ray: its own ports and
temp dir, `--block` in a session of its own, so stopping it stops every process of it (and of
the nodes an autoscaler started from it) and never touches another Ray on the machine. (Ray's
`ray.cluster_utils.AutoscalingCluster` runs `ray stop --force`, which would kill the suite's.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
# `ray start` turns token authentication on; these test heads are private to one test
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(port: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`ray start --head --block` on `port`. Every other port is its own too: the suite's Ray
    already holds the defaults (e.g. the dashboard agent's 52365), and a second node on them
    fails to start its agents."""
    own = [
        f"--{flag}={free_port()}"
        for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "node-manager-port", "object-manager-port",
            "ray-client-server-port",
        )
    ]  # fmt: skip
    temp = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths are capped
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_ADDRESS": ""} | (env or {})
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp}",
         "--disable-usage-stats", *own, *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def stop_head(head: subprocess.Popen) -> None:
    """SIGTERM to the head's session, then SIGKILL to whatever of it is left (a node an
    autoscaler started is a child of the head's monitor, in the same session)."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    for line in subprocess.run(
        ["ps", "-eo", "pid=,sid="], capture_output=True, text=True
    ).stdout.splitlines():
        pid, sid = map(int, line.split())
        if sid == head.pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
