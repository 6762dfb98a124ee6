"""Starting or joining Ray: local single-node for development, a cluster under `ray job submit`."""

from __future__ import annotations

import logging
import os

from pipelines.config import ClusterSection

log = logging.getLogger(__name__)


def init_ray(cfg: ClusterSection) -> None:
    """Join the configured cluster, or start a local one sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    # Off a TTY Ray Data logs a progress table every 10 s; once a minute keeps logs readable.
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    # Inside `ray job submit` RAY_ADDRESS is set: always join that cluster.
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    log.info("ray: %s, resources %s", address or "local", ray.cluster_resources())
