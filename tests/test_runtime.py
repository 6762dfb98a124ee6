"""A stage that Ray Train could never schedule on this fixed-size local Ray fails fast with one
clear line instead of waiting forever."""

from __future__ import annotations

import pytest

from cluster.runtime import check_train_fits
from pipelines.config import ClusterSection
from pipelines.errors import UserError


def test_train_that_cannot_fit_is_refused(ray_local):
    too_big = ClusterSection(num_train_workers=64, cpus_per_train_worker=1.0)
    with pytest.raises(UserError, match="cluster.num_train_workers") as err:
        check_train_fits(too_big, wait_s=0)
    assert "64 CPU" in str(err.value) and "\n" not in str(err.value)


def test_train_that_fits_passes(ray_local):
    check_train_fits(ClusterSection(num_train_workers=1, cpus_per_train_worker=0.01), wait_s=0)


def test_joined_cluster_is_not_refused(ray_local):
    # An autoscaling cluster may add nodes: only a local Ray is known to be fixed in size.
    joined = ClusterSection(address="auto", num_train_workers=64, cpus_per_train_worker=1.0)
    check_train_fits(joined, wait_s=0)
