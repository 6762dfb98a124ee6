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
    # Inside `ray job submit` RAY_ADDRESS is set: always join that cluster.
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    import ray.data

    # Our own tqdm bars report progress; Ray Data's per-dataset tables would drown the log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    log.info("ray: %s, resources %s", address or "local", ray.cluster_resources())
