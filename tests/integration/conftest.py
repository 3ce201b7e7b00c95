"""A local Ray instance for the integration tests that run Ray in this process (~5 s to start).

One per module, not per session: a local instance keeps its idle workers warm (sweep/run.py), each
holding torch and transformers in memory, and the modules after it run sweeps of their own in
subprocesses with instances of their own."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    from overopt.config import ExperimentConfig
    from overopt.sweep.run import start_ray

    # Room for the largest trial any test here runs: 2 at once, async evaluation with 2 in flight.
    start_ray(ExperimentConfig.model_validate({"sweep": {"max_concurrent_trials": 2}, "evaluation": {"mode": "async", "max_in_flight": 2}}))
    yield ray
    ray.shutdown()
