"""Running an experiment again: config.yaml never changes; settings a restore would not apply are
refused, naming each key; the others are applied and recorded; every invocation leaves a record."""

import json

import pytest
import yaml

from overopt.config import ConfigError, load_config
from overopt.sweep.resume import resume_differences


def _config(storage, *overrides):
    return load_config(None, [f"storage={storage}", "name=resume", *overrides])


def _records(experiment):
    return [json.loads(p.read_text()) for p in sorted((experiment / "invocations").glob("*.json"))]


class _RayWouldStart(Exception):
    pass


@pytest.fixture
def no_ray(monkeypatch):
    """run_sweep up to the point where it would start Ray (the settings are all decided by then)."""
    import overopt.sweep.run as run

    def refuse(*args, **kwargs):
        raise _RayWouldStart

    monkeypatch.setattr(run, "start_ray", refuse)
    return run


def test_settings_outside_the_hash_are_split_into_refused_and_applied(tmp_path):
    first = _config(tmp_path, "sweep.max_concurrent_trials=1", "evaluation.scoring_batch_size=64")
    again = _config(tmp_path, "sweep.max_concurrent_trials=2", "evaluation.scoring_batch_size=32", "checkpointing.max_failures=3")
    refused, applied = resume_differences(first, again)
    assert refused == {"sweep.max_concurrent_trials": (1, 2), "checkpointing.max_failures": (0, 3)}
    assert applied == {"evaluation.scoring_batch_size": (64, 32)}
    assert resume_differences(first, first) == ({}, {})


def test_a_rerun_of_an_unfinished_sweep_with_settings_tune_would_not_apply_is_refused(tmp_path, no_ray):
    first = _config(tmp_path)
    with pytest.raises(_RayWouldStart):
        no_ray.run_sweep(first, log=lambda line: None, invocation={"config": None, "overrides": ["name=resume"]})
    experiment = tmp_path / no_ray.experiment_name(first)
    written = (experiment / "config.yaml").read_text()
    (experiment / "tune").mkdir()
    (experiment / "tune" / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for: an unfinished sweep
    again = _config(tmp_path, "sweep.max_concurrent_trials=3", "evaluation.mode=async")
    assert no_ray.experiment_name(again) == experiment.name  # the same experiment
    with pytest.raises(ConfigError) as refused:
        no_ray.run_sweep(again, log=lambda line: None)
    message = str(refused.value)
    assert "sweep.max_concurrent_trials: 1 in its first run, 3 now" in message
    assert "evaluation.mode: 'inline' in its first run, 'async' now" in message
    assert "--set name=" in message  # how to start a new experiment instead
    assert (experiment / "config.yaml").read_text() == written  # never changed after the first run
    assert [r["action"] for r in _records(experiment)] == ["new"]  # the refused run left nothing behind


def test_settings_that_can_be_applied_are_applied_and_recorded_not_written_into_config_yaml(tmp_path, no_ray):
    first = _config(tmp_path)
    with pytest.raises(_RayWouldStart):
        no_ray.run_sweep(first, log=lambda line: None)
    experiment = tmp_path / no_ray.experiment_name(first)
    (experiment / "tune").mkdir()
    (experiment / "tune" / "tuner.pkl").write_bytes(b"")
    lines = []
    with pytest.raises(_RayWouldStart):
        no_ray.run_sweep(
            _config(tmp_path, "evaluation.scoring_batch_size=16"),
            log=lines.append,
            invocation={"config": "x.yaml", "overrides": ["evaluation.scoring_batch_size=16"]},
        )
    stored = yaml.safe_load((experiment / "config.yaml").read_text())
    assert stored["evaluation"]["scoring_batch_size"] == 64  # config.yaml still says what the first run asked for
    first_record, second = _records(experiment)
    assert first_record["action"] == "new" and second["action"] == "resumed"
    assert second["applied"] == {"evaluation.scoring_batch_size": {"first_run": 64, "now": 16}}
    assert second["overrides"] == ["evaluation.scoring_batch_size=16"] and second["config"] == "x.yaml"
    assert any("evaluation.scoring_batch_size: 16 (the first run had 64)" in line for line in lines)


def test_a_finished_experiment_is_reused_whatever_its_speed_settings(tmp_path, no_ray):
    first = _config(tmp_path)
    experiment = tmp_path / no_ray.experiment_name(first)
    experiment.mkdir()
    (experiment / "config.yaml").write_text(first.to_yaml())
    (experiment / "results.parquet").write_bytes(b"")  # marks a finished sweep
    assert no_ray.run_sweep(_config(tmp_path, "sweep.max_concurrent_trials=4"), log=lambda line: None).endswith(experiment.name)
    assert [r["action"] for r in _records(experiment)] == ["results reused"]
    assert (experiment / "config.yaml").read_text() == first.to_yaml()
