"""Trackers before a sweep: a down MLflow server stops it before anything runs, naming the URI; W&B
online needs a key; the tracking section stays outside the experiment's hash. No Ray cluster."""

import importlib.util
import socket
import time
from pathlib import Path

import pytest

from overopt.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("scale_sweep", ROOT / "jobs" / "scale_sweep.py")
scale_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale_sweep)


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_down_mlflow_server_stops_the_sweep_before_anything_runs(tmp_path, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    storage = tmp_path / "runs"
    started = time.time()
    argv = ["--config", str(ROOT / "configs/smoke.yaml"), "--set", f"storage={storage}", "--set", f"tracking.mlflow.tracking_uri={uri}"]
    assert scale_sweep.main(argv) == 2
    assert time.time() - started < 60  # no retries with backoff: the probe asks once
    err = capsys.readouterr().err
    assert f"error: tracking.mlflow.tracking_uri {uri}: the MLflow tracking server does not answer" in err and "Traceback" not in err
    assert not storage.exists()  # nothing written: no experiment, no stage cache


def test_the_callbacks_refuse_a_down_server_too(tmp_path):
    """run_sweep called in-process (no input checks) builds the callbacks before Tune starts: same refusal."""
    from overopt.sweep.tracking import tracking_callbacks

    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = load_config(None, [f"storage={tmp_path}", f"tracking.mlflow.tracking_uri={uri}"])
    with pytest.raises(ConfigError, match=f"tracking.mlflow.tracking_uri {uri}: the MLflow tracking server does not answer"):
        tracking_callbacks(cfg, str(tmp_path / "embedded-0123"), log=lambda line: None)
    assert not (tmp_path / "embedded-0123").exists()


def test_wandb_online_without_a_key_is_refused_and_offline_needs_none(tmp_path, monkeypatch):
    from overopt.sweep.tracking import tracker_problems

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    online = load_config(None, ["tracking.wandb.project=p"])
    (problem,) = tracker_problems(online)
    assert "WANDB_API_KEY" in problem and "tracking.wandb.mode=offline" in problem
    assert tracker_problems(load_config(None, ["tracking.wandb.project=p", "tracking.wandb.mode=offline"])) == []
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracker_problems(online) == []


def test_tracking_is_outside_the_hash_and_refused_when_resuming(tmp_path):
    from overopt.sweep.resume import resume_differences
    from overopt.sweep.run import experiment_name

    plain = load_config(None, [f"storage={tmp_path}"])
    tracked = load_config(None, [f"storage={tmp_path}", "tracking.mlflow.tracking_uri=http://127.0.0.1:5000", "tracking.tensorboard=true"])
    assert experiment_name(plain) == experiment_name(tracked)
    refused, applied = resume_differences(plain, tracked)
    assert set(refused) == {"tracking.mlflow.tracking_uri", "tracking.tensorboard"} and applied == {}


def test_credentials_in_the_tracking_uri_are_refused():
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME") as error:
        load_config(None, ["tracking.mlflow.tracking_uri=https://me:secret@mlflow.example.org"])
    assert "secret" not in str(error.value).split("tracking_uri: ", 1)[-1]
