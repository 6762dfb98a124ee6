"""Starting or joining Ray: local single-node for development, a cluster under `ray job submit`."""

from __future__ import annotations

import logging
import os
import socket

from pipelines.core.config import ClusterSection
from pipelines.core.errors import UserError

log = logging.getLogger(__name__)


def quiet_worker_logs() -> None:
    """worker_process_setup_hook of a local Ray: a local Ray runs without the dashboard, so Ray
    Train's placement-group cleaner cannot reach the State API and warns about it every few
    seconds of every stage; those lines would bury the run's own log."""
    logging.getLogger(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    ).setLevel(logging.ERROR)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # see pipelines/cli.py
    # Ray Train's controller and workers narrate every start at INFO (group size, ranks, DDP
    # wrapping, device moves); the stage's own log says what matters.
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def check_reachable(address: str, timeout_s: float) -> None:
    """A cluster address (host:port, ray://host:port) that does not accept a TCP connection is
    one error line within timeout_s. Ray itself would retry for minutes, printing warnings."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # "auto" and bare hosts: Ray resolves them itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(
            f"cluster.address '{address}' does not answer ({reason}, waited up to "
            f"{timeout_s:g} s, cluster.connect_timeout_s): start the Ray head there "
            "(`ray start --head`) or leave cluster.address empty for a local Ray"
        ) from None


def init_ray(cfg: ClusterSection) -> None:
    """Join the configured cluster, or start a local one sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    # Inside `ray job submit` RAY_ADDRESS is set: always join that cluster.
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address, cfg.connect_timeout_s)
    # A local Ray is one node, which Ray never drains: Ray Train's preemption watcher (started
    # per stage, per worker group) has nothing to watch. Ray starts it with the workers' actor
    # handles as constructor arguments and max_restarts -1, which it reports at ERROR level in
    # every stage (ray-project/ray#53727). A joined cluster keeps it (its nodes can be drained).
    env = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    setup = {"worker_process_setup_hook": quiet_worker_logs, "env_vars": env}
    local = {"runtime_env": setup} if not address else {}
    if not address:
        # A new local Ray turns token authentication on (the default when RAY_AUTH_MODE is
        # unset) and says so in a warning that opens every command. Authentication stays on;
        # only the notice goes. (RAY_AUTH_MODE cannot be set here: Ray reads it at import.)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
    ray.init(
        address=address,
        include_dashboard=False,
        **local,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    import ray.data

    # Our own tqdm bars report progress; Ray Data's per-dataset tables would drown the log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... and it would say so at WARNING in every run ("Progress bars disabled. To enable...").
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    log.info("ray: %s, resources %s", address or "local", ray.cluster_resources())
