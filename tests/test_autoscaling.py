"""Autoscaling, exercised: the test profile run on a cluster that starts with a head only (no
CPU, like ray_cluster.yaml's) and the worker node types of ray_cluster.yaml as small CPU
stand-ins, under Ray's fake multi-node autoscaler. The roles that ask for GPUs on the real
cluster ask here for the custom resource the GPU type's stand-in declares
(resources.<role>.resources). Checked: the autoscaler adds exactly the GPU-type nodes the roles
need (an autoscaler adds and removes nodes as demand comes and goes, so the check is on the
most GPU-type nodes alive at once), the run completes and commits its samples, and the idle
nodes are released."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from one_stage import COMPARE, run_command
from ray_head import NO_AUTH, free_port, start_head, stop_head

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
STANDIN = "gpu_standin"  # what a GPU-type stand-in declares, and the GPU roles ask for
PER_NODE = 2  # stand-in GPUs per GPU-type node


def standin_node_types(cluster_yaml: Path) -> dict:
    """ray_cluster.yaml's worker types, each shrunk to one CPU; a GPU type declares PER_NODE
    stand-in GPUs. None is started ahead of demand (min_workers 0): the head starts alone."""
    spec = yaml.safe_load(cluster_yaml.read_text())
    types = {}
    for name, t in spec["available_node_types"].items():
        if name == spec["head_node_type"]:
            continue
        res = {"CPU": 1, "object_store_memory": 200_000_000}
        if t["resources"].get("GPU"):
            res[STANDIN] = PER_NODE
        types[name] = {"resources": res, "node_config": {}, "min_workers": 0, "max_workers": 3}
    return types


def autoscaling_config(types: dict, gcs_address: str) -> dict:
    """The fake multi-node provider's cluster config (Ray's fake_multi_node/example.yaml)."""
    head = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    provider = {
        "type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
        "disable_launch_config_check": True, "gcs_address": gcs_address,
    }  # fmt: skip
    empty = ["initialization_commands", "setup_commands", "head_setup_commands",
             "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
             "cluster_synced_files", "rsync_exclude", "rsync_filter"]  # fmt: skip
    return {
        "cluster_name": "standin", "max_workers": 6, "provider": provider,
        "available_node_types": types | {"ray.head.default": head},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1, "docker": {}, "file_mounts": {},
        "file_mounts_sync_continuously": False, **{k: [] for k in empty},
    }  # fmt: skip


def nodes(gcs_address: str) -> list[tuple[str, bool]]:
    """(node type, alive) of every node the cluster ever had; the head's type is ''."""
    from ray._raylet import GcsClient

    info = GcsClient(address=gcs_address).get_all_node_info()
    return [(n.node_type_name, n.state == 0) for n in info.values()]  # 0: ALIVE


class PeakWatch:
    """The most nodes of each type alive at once, sampled every second in a thread."""

    def __init__(self, gcs_address: str):
        self.gcs, self.peak, self._stop = gcs_address, Counter(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(1.0):
            alive = Counter(t for t, up in nodes(self.gcs) if up and t)
            self.peak = self.peak | alive  # elementwise max

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def status(gcs_address: str) -> str:
    """`ray status` of the cluster: its nodes, pending demands and usage (for failure messages)."""
    env = os.environ | NO_AUTH
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "status", f"--address={gcs_address}"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    return out.stdout[-3000:] + out.stderr[-1000:]


def wait_for(what: str, check, timeout_s: float, explain=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s: {explain()}"
        time.sleep(1)
    return result


@pytest.fixture
def standin_cluster(tmp_path):
    """A head alone, with the autoscaler watching ray_cluster.yaml's stand-in node types."""
    import ray

    port = free_port()
    gcs = f"{ray.util.get_node_ip_address()}:{port}"
    config = tmp_path / "autoscaling.json"
    config.write_text(
        json.dumps(autoscaling_config(standin_node_types(REPO / "ray_cluster.yaml"), gcs))
    )
    env = NO_AUTH | {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head = start_head(
        port, "--num-cpus=0", "--include-dashboard=false", f"--autoscaling-config={config}", env=env
    )
    try:
        wait_for("the head came up", lambda: _answers(gcs, head), 120)
        yield gcs
    finally:
        stop_head(head)


def _answers(gcs: str, head: subprocess.Popen) -> bool:
    assert head.poll() is None, head.stderr.read().decode()[-2000:]
    try:
        return len(nodes(gcs)) >= 1
    except Exception:
        return False


@pytest.mark.timeout(900)
def test_the_autoscaler_adds_the_nodes_the_roles_need_and_releases_them(
    standin_cluster, tiny_world, load_test_profile, tmp_path
):
    gcs = standin_cluster
    assert nodes(gcs) == [("", True)]  # the head alone
    asks = f"{{{STANDIN}: 1}}"
    cfg = load_test_profile(
        "run.name=autoscaled", f"run.output_dir={tmp_path}", f"cluster.address={gcs}", *COMPARE,
        "stages.method=policylong", f"resources.scorer.resources={asks}",
        f"resources.verifier.resources={asks}", f"resources.trainer.resources={asks}",
    )  # fmt: skip
    command = run_command(cfg, tmp_path)
    with PeakWatch(gcs) as watch:
        run = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=780, env=os.environ | NO_AUTH
        )
    assert run.returncode == 0, run.stderr[-3000:]
    stage = tmp_path / "autoscaled" / "stages" / "stage_0"
    manifest = json.loads((stage / "stage_manifest.json").read_text())
    assert manifest["construction"]["samples"] > 0, manifest["construction"]

    types = standin_node_types(REPO / "ray_cluster.yaml")
    gpu_type = next(n for n, t in types.items() if STANDIN in t["resources"])
    r = cfg.resources
    asked = r.scorer.count + r.verifier.count + r.trainer.count  # stand-in GPUs, one each: 4
    # the scorer and verifier still run while the trainers train: all four at once need
    # ceil(4 / 2) GPU-type nodes, and the autoscaler may not exceed the type's max_workers
    need = -(-asked // PER_NODE)
    explain = f"peak alive {dict(watch.peak)}, all {nodes(gcs)}\n{status(gcs)}"
    assert need <= watch.peak[gpu_type] <= types[gpu_type]["max_workers"], explain
    wait_for(
        "the idle nodes were released",
        lambda: all(not alive for t, alive in nodes(gcs) if t),
        180,
        lambda: f"{nodes(gcs)}\n{status(gcs)}",
    )
