"""A local Ray instance never grows: a config whose trials need GPUs this machine lacks is refused at
start with the fields to change, instead of waiting forever for resources."""

import pytest

from overopt.config import ConfigError, load_config


def test_a_trial_needing_missing_gpus_is_refused_on_a_local_instance(monkeypatch):
    import ray

    from overopt.sweep.run import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, ["evaluation.gpus_per_task=1"])
    with pytest.raises(ConfigError, match=r"needs 2 GPUs .*evaluation.gpus_per_task"):
        start_ray(cfg, log=lambda line: None)
    assert not ray.is_initialized()  # nothing left running
