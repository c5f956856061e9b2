"""Shared fixtures: one local Ray cluster for every test that needs Ray (started on first use)."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with 4 logical CPUs (2 workers + drivers fit on 2 cores), shut down at the end."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    import ray

    ray.init(num_cpus=4, object_store_memory=300 * 1024**2, logging_level="WARNING")
    yield ray
    ray.shutdown()
