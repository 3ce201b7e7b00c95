"""configs/smoke.yaml run as a user runs it (``python jobs/scale_sweep.py``, no RAY_ADDRESS), with its
storage in an S3-compatible bucket (moto on 127.0.0.1), from a directory that must stay empty.

One sweep, two promises:

- ``--set storage=URI`` moves all of a run's output: rows, results, report, Tune's state, the stages'
  cache and the logs land in the bucket, nothing in the working directory, and the analysis runs
  from the URI elsewhere.
- The console (sweep/console.py) prints the sweep's own lines (the experiment and where its logs are,
  the stages, a line per evaluation, the summary) and nothing of what Ray's workers, the raylet, Ray's,
  Tune's or DeepSpeed's loggers print; that goes to ``<experiment>/logs/<run>/`` (on a URI: written
  locally, uploaded when the sweep ends). ``--verbose`` is checked on Ray's own routing objects in
  tests/unit/test_console.py.
"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from overopt.storage import Storage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "overopt-test"
RAY_LOGGER_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR) \S+\.py:\d+ -- ")  # Ray's logger format
DEEPSPEED_LOGGER_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [^]]*\] \[(DEBUG|INFO|WARNING|ERROR)\]")  # DeepSpeed's logger format
TUNE_OUTPUT = ("Trial status", "View detailed results here", "Configuration for experiment", "Number of errored trials")


@pytest.fixture(scope="module")
def s3():
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
    """The sweep's console output, and where everything went: (done, store, experiment, run, cwd, env)."""
    location, credentials = s3
    cwd = tmp_path_factory.mktemp("elsewhere")  # the job's working directory: must stay empty
    env = {**os.environ, **credentials, "TORCH_EXTENSIONS_DIR": str(ROOT / ".torch_extensions")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
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
        timeout=1400,
    )
    # What a user would have seen, kept beside the working directory for a look afterwards.
    (cwd.parent / "console.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    os.environ.update(credentials)  # for this process's reads of the bucket
    store = Storage(location)
    [experiment] = {path.split("/")[0] for path in store.list("", recursive=True) if path.startswith("smoke-")}
    [run] = {path.split("/")[2] for path in store.list(f"{experiment}/logs", recursive=True)}
    return done, store, experiment, run, cwd, env


def test_everything_lands_in_the_bucket(swept):
    _, store, experiment, _, cwd, _ = swept
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
    _, store, experiment, _, _, env = swept
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


def test_the_console_has_no_worker_ray_deepspeed_or_tune_output(swept):
    done = swept[0]
    noise = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "pid=" in line
        or "(raylet" in line
        or "logging_progress" in line
        or ("deepspeed" in line.lower() and not line.startswith("logs: "))
        or RAY_LOGGER_LINE.search(line)
        or DEEPSPEED_LOGGER_LINE.search(line)
        or any(text in line for text in TUNE_OUTPUT)
    ]
    assert noise == [], "\n".join(noise[:40])


def test_the_console_has_the_sweeps_own_lines_and_says_where_the_logs_are(swept):
    done, store, experiment, run, _, _ = swept
    lines = done.stdout.splitlines()
    assert lines[0] == f"experiment: {store.uri(experiment)}"
    assert lines[1].startswith(f"logs: {store.uri(f'{experiment}/logs/{run}')}/ (uploaded when the sweep ends; until then ")
    assert "--verbose" in lines[1]
    assert any(line.startswith("started a local Ray instance") for line in lines)
    assert "preparing reference models, preference pairs and eval sets" in lines
    stages = [line for line in lines if re.match(r"  (reusing|built) \S+/cache/(reference|pairs|eval)/", line)]
    assert len(stages) == 3, lines  # each stage ends with a line, built here or reused
    assert sum(bool(re.match(r"  \S+: building the (reference model|preference pairs|eval set) \.\.\.$", line)) for line in lines) == sum(
        line.startswith("  built ") for line in stages
    )  # and a built one starts with one
    assert any(line.startswith("stages ready in") for line in lines)
    evaluations = [line for line in lines if re.match(r"\[dpo beta=\S+ tiny seed=0\] epoch \S+: KL ", line)]
    assert len(evaluations) == len(store.list(f"{experiment}/rows", ".json", recursive=True)) >= 4  # a line per evaluation
    assert any(re.match(r"sweep finished in \d+ s: \d+ evaluations of 2 trials", line) for line in lines)
    assert any(line.startswith("objective ") and "peak win" in line for line in lines)  # the summary table
    assert f"report: {store.uri(f'{experiment}/report.md')}" in lines


def test_the_logs_hold_what_the_workers_ray_and_deepspeed_printed(swept):
    done, store, experiment, run, _, _ = swept
    workers = store.read_text(f"{experiment}/logs/{run}/workers.log")
    assert re.search(r"^\S+ \S+ \(RayTrainWorker pid=\d+\) ", workers, re.M), workers[:3000]
    assert "DeepSpeed" in workers or "deepspeed" in workers
    if "building the reference model" in done.stdout:  # the SFT stage ran here: its step lines are the workers'
        assert re.search(r"\(RayTrainWorker pid=\d+\)\s+sft tiny: step 60/60 loss ", workers), workers[-3000:]
    driver = store.read_text(f"{experiment}/logs/{run}/driver.log")
    assert "Started a local Ray instance" in driver, driver[:3000]
