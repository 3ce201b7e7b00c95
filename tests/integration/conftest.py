"""A local Ray instance shared by the integration tests (started once; ~5 s)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    from overopt.config import ExperimentConfig
    from overopt.sweep.run import start_ray

    start_ray(ExperimentConfig())
    yield ray
    ray.shutdown()
