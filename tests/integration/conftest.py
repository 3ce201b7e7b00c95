"""A local Ray instance for the integration tests that run Ray in this process (~5 s to start), and
the smoke config's stages shared between modules (``smoke_stages``).

One per module, not per session: a local instance keeps its idle workers warm (sweep/run.py), each
holding torch and transformers in memory, and the modules after it run sweeps of their own in
subprocesses with instances of their own."""

import os
import shutil
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


class SmokeStages:
    """The stages of configs/smoke.yaml (SFT reference, pairs, eval set: 40-60 s on two cores), shared
    by the modules whose sweeps have the same stage configs: the first to finish a sweep keeps its
    storage's ``cache/``, later ones start from a copy. The cache is content-addressed
    (sweep/stages.py): a stage whose config differs is still built, and a module run alone builds all."""

    def __init__(self):
        self.cache: Path | None = None

    def seed(self, storage: Path) -> None:
        if self.cache is not None:
            shutil.copytree(self.cache, storage / "cache", dirs_exist_ok=True)

    def keep(self, storage: Path) -> None:
        if self.cache is None and (storage / "cache").is_dir():
            self.cache = storage / "cache"


@pytest.fixture(scope="session")
def smoke_stages():
    return SmokeStages()
