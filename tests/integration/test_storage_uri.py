"""`--set storage=URI` moves all of a run's output: the smoke sweep against an S3-compatible server
(moto) on 127.0.0.1, nothing written to the local working directory, and the analysis run from the URI."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from overopt.storage import Storage

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "overopt-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    credentials = {"AWS_ACCESS_KEY_ID": "overopt", "AWS_SECRET_ACCESS_KEY": "overopt", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client(
        "s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1", aws_access_key_id="overopt", aws_secret_access_key="overopt"
    ).create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}/runs?endpoint_override={host}:{port}&scheme=http&region=us-east-1", credentials
    server.stop()


@pytest.fixture(scope="module")
def swept(s3, tmp_path_factory):
    location, credentials = s3
    cwd = tmp_path_factory.mktemp("elsewhere")  # the job's working directory: must stay empty
    env = {**os.environ, **credentials, "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    sweep = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "scale_sweep.py"),
            "--config",
            str(ROOT / "configs" / "smoke.yaml"),
            "--set",
            f"storage={location}",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    os.environ.update(credentials)  # for this process's reads of the bucket
    return location, cwd, env


def test_everything_lands_in_the_bucket(swept):
    location, cwd, _ = swept
    store = Storage(location)
    [experiment] = {path.split("/")[0] for path in store.list("", recursive=True) if path.startswith("smoke-")}
    for part in ("config.yaml", "results.parquet", "report.md", "fits.json"):
        assert store.exists(f"{experiment}/{part}"), part
    assert store.list(f"{experiment}/rows", ".json", recursive=True)
    assert store.list(f"{experiment}/audit", ".parquet", recursive=True)
    assert store.list(f"{experiment}/tune", recursive=True)  # Tune's own experiment state
    assert store.list("cache/reference", "model.safetensors", recursive=True)  # the SFT stage's output
    results = store.read_parquet(f"{experiment}/results.parquet").to_pandas()
    assert results["trial_name"].nunique() == 2 and (results["stop_reason"] == "completed").all()
    assert [p for p in cwd.rglob("*")] == []  # nothing written where the job ran


def test_analysis_runs_from_the_uri_elsewhere(swept, tmp_path):
    location, _, env = swept
    store = Storage(location)
    [experiment] = {path.split("/")[0] for path in store.list("", recursive=True) if path.startswith("smoke-")}
    store.fs.delete_file(store.path(f"{experiment}/report.md"))
    analysis = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "analyze.py"), store.uri(experiment), "--bootstrap", "20"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert "## " in store.read_text(f"{experiment}/report.md")
    assert isinstance(pd.read_parquet(store.path(f"{experiment}/results.parquet"), filesystem=store.fs), pd.DataFrame)
