"""One smoke sweep (configs/smoke.yaml) with every tracker on, read back with each tracker's own
reader, and its kept policies exported as Hugging Face models.

    MLflow       a real tracking server on 127.0.0.1 (sqlite store, served artifacts, its own temp dir),
                 read with MlflowClient: one run per trial with its params, every metric's history at
                 every step with results.parquet's values, the stop reason tag, the report as artifacts
    W&B          offline mode: the runs' .wandb files (W&B's record log of protobuf records), parsed
    TensorBoard  the event files under <experiment>/tensorboard, parsed (TFRecord framing + tensorboardX's Event proto)
    export       jobs/export.py's directory loads with AutoModelForCausalLM.from_pretrained and gives the
                 log-probs the evaluation recorded (audit/<trial>/step_X.parquet) to fp32 tolerance
    a tracker going down mid-sweep is reported and never raises (last: it stops the server)
"""

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overopt.config import load_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# Row columns that are not measurements of the evaluation (Tune's bookkeeping, times, ids, trial settings).
NOT_COMPARED = {
    "training_iteration",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "pid",
    "done",
    "trial_started_at",
    "reported_at",
    "beta",
    "seed",
    "step",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{home}/mlflow.db",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=home,
        stdout=open(home / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        assert server.poll() is None and time.time() < deadline, (
            f"mlflow server did not start:\n{(home / 'server.log').read_text()[-3000:]}"
        )
        time.sleep(1)
    yield uri, server
    if server.poll() is None:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def tracked(ray_local, tmp_path_factory, smoke_stages, mlflow_server):
    from overopt.analysis.report import analyze
    from overopt.sweep.run import run_sweep
    from overopt.sweep.tracking import publish_analysis

    uri, _ = mlflow_server
    out = tmp_path_factory.mktemp("runs")
    smoke_stages.seed(out)
    cfg = load_config(
        ROOT / "configs/smoke.yaml",
        [
            f"storage={out}",
            "name=tracked",
            f"tracking.mlflow.tracking_uri={uri}",
            "tracking.wandb.project=overopt-test",
            "tracking.wandb.mode=offline",
            "tracking.tensorboard=true",
        ],
    )
    os.environ["WANDB_SILENT"] = "true"  # no banner per run in the test log
    experiment = Path(run_sweep(cfg))
    smoke_stages.keep(out)
    analyze(experiment, n_bootstrap=20, toy_mdp=False)
    publish_analysis(str(experiment))  # what jobs/scale_sweep.py and jobs/analyze.py do after the analysis
    results = pd.read_parquet(experiment / "results.parquet")
    return cfg, experiment, results


def _measurements(results: pd.DataFrame, experiment: Path) -> list[str]:
    """The numeric columns of the rows the trials reported (results.parquet adds stop columns of its own)."""
    reported = set().union(*(json.loads(p.read_text()) for p in experiment.glob("rows/*/step_*.json")))
    return [
        c
        for c in results.columns
        if c in reported
        and c not in NOT_COMPARED
        and pd.api.types.is_numeric_dtype(results[c])
        and not pd.api.types.is_bool_dtype(results[c])
    ]


def _same(expected: float, got: float) -> bool:
    return (math.isnan(expected) and math.isnan(got)) or math.isclose(expected, got, rel_tol=1e-6, abs_tol=1e-9)


def test_mlflow_has_a_run_per_trial_with_every_row_at_its_step(tracked, mlflow_server):
    from mlflow.tracking import MlflowClient

    _, experiment, results = tracked
    client = MlflowClient(tracking_uri=mlflow_server[0])
    record = json.loads((experiment / "tracking/mlflow.json").read_text())
    mlflow_experiment = client.get_experiment_by_name("tracked")  # tracking.mlflow.experiment_name unset: the config's name
    runs = client.search_runs([mlflow_experiment.experiment_id], filter_string="tags.`overopt.role` = 'trial'")
    assert sorted(run.data.tags["trial_name"] for run in runs) == sorted(results["trial_name"].unique())
    columns = _measurements(results, experiment)
    assert {"kl", "win_rate", "win_rate_low", "win_rate_high", "mean_length", "loss"} <= set(columns)
    for run in runs:
        assert run.data.tags["mlflow.parentRunId"] == record["run_id"]
        trial = results[results["trial_name"] == run.data.tags["trial_name"]].sort_values("step")
        first = trial.iloc[0]
        assert run.data.params["trial/objective"] == first["objective"] and float(run.data.params["trial/beta"]) == first["beta"]
        assert run.data.params["trial/size"] == first["size"] and int(run.data.params["trial/seed"]) == first["seed"]
        assert run.data.tags["stop_reason"] == first["stop_reason"]
        assert run.info.status == "FINISHED"
        for column in columns:
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, column))
            assert [step for step, _ in history] == trial["step"].tolist(), column
            for (_, value), expected in zip(history, trial[column]):
                assert _same(float(expected), value), (column, expected, value)
    parent = client.get_run(record["run_id"])
    assert parent.data.params["train.betas.dpo"] == "[0.1, 1.0]" and parent.data.tags["overopt.role"] == "experiment"
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"report.md", "win_rate_vs_d.png", "fits.json", "results.parquet", "config.yaml"} <= artifacts
    local = client.download_artifacts(record["run_id"], "report.md")
    assert Path(local).read_text() == (experiment / "report.md").read_text()


def _wandb_records(path: Path):
    """The protobuf records of a .wandb file: W&B's log format (LevelDB's log framing: 32 KiB blocks of
    chunks with a 7-byte header crc32/length/type, after a 7-byte file header ':W&B', 0xBEE1, version)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_files_hold_the_same_rows(tracked):
    _, experiment, results = tracked
    files = sorted((experiment / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == results["trial_name"].nunique()
    columns = _measurements(results, experiment)
    seen = set()
    for path in files:
        history, names = [], set()
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                names.add(record.run.display_name)  # the Tune trial's name: the rows' trial_name
            if kind == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        (name,) = names
        seen.add(name)
        trial = results[results["trial_name"] == name].sort_values("step")
        assert [row["_step"] for row in history] == trial["step"].tolist()
        for row, (_, expected) in zip(history, trial.iterrows()):
            for column in columns:
                got = row.get(column)
                got = float("nan") if got is None or got == "NaN" else float(got)
                assert _same(float(expected[column]), got), (column, expected[column], got)
    assert seen == set(results["trial_name"])


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the event files in ``directory`` (TFRecord framing: length, its crc,
    the Event proto, its crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, position = path.read_bytes(), 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            event = event_pb2.Event.FromString(data[position + 12 : position + 12 + length])
            position += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_per_trial_at_the_training_step(tracked):
    _, experiment, results = tracked
    directories = sorted(p for p in (experiment / "tensorboard").iterdir() if p.is_dir())
    assert sorted(p.name for p in directories) == sorted(results["trial_name"].unique())
    for directory in directories:
        trial = results[results["trial_name"] == directory.name].sort_values("step")
        scalars = _tensorboard_scalars(directory)
        for column in ("kl", "win_rate", "mean_length"):
            logged = scalars[f"ray/tune/{column}"]
            assert [step for step, _ in logged] == trial["step"].tolist()
            assert np.allclose([v for _, v in logged], trial[column], rtol=1e-6)  # float32 in the event file


def test_each_trial_keeps_its_best_and_last_policy(tracked):
    _, experiment, results = tracked
    for name, trial in results.groupby("trial_name"):
        kept = json.loads((experiment / f"models/{name}/kept.json").read_text())
        best = trial.loc[trial["win_rate"].idxmax()]  # idxmax: the first of equal maxima, as kept
        assert kept["best"]["step"] == best["step"] and kept["last"]["step"] == trial["step"].max()
        on_disk = sorted(p.name for p in (experiment / f"models/{name}").iterdir() if p.is_dir())
        assert on_disk == sorted({f"step_{kept['best']['step']:06d}", f"step_{kept['last']['step']:06d}"})
    assert not (experiment / "checkpoints").exists()


@pytest.mark.parametrize("which", ["best", "last"])
def test_exported_policy_reproduces_the_recorded_logprobs(tracked, tmp_path, which):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from overopt.logprobs import chunked_sequence_logprobs

    _, experiment, results = tracked
    name = sorted(results["trial_name"].unique())[0]
    done = subprocess.run(
        [sys.executable, "jobs/export.py", str(experiment), "--trial", name, "--step", which, "--out", str(tmp_path / "model")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "model"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    step = json.loads((experiment / f"models/{name}/kept.json").read_text())[which]["step"]
    row = results[(results["trial_name"] == name) & (results["step"] == step)].iloc[0]
    card = (out / "README.md").read_text()
    for fact in (
        f"| beta | {row['beta']:g} |",
        f"| step | {step} |",
        f"| win rate | {row['win_rate']:.3f} [{row['win_rate_low']:.3f}, {row['win_rate_high']:.3f}]",
        f"| epoch fraction | {row['epoch_fraction']:.3f} |",
        "| judge | gold",
        f"{row['kl']:.3f}",
    ):
        assert fact in card, fact
    generation = GenerationConfig.from_pretrained(out)
    assert generation.do_sample and generation.temperature == 1.0 and generation.top_k == 0 and generation.top_p == 1.0

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch.float32  # smoke trains in fp32: the training dtype
    tokenizer = AutoTokenizer.from_pretrained(out)
    audit = pd.read_parquet(experiment / f"audit/{name}/step_{step:06d}.parquet")
    prompts = [tokenizer(text)["input_ids"] for text in audit["prompt"]]
    responses = [
        tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if finished else [])
        for text, finished in zip(audit["response"], audit["finished"])
    ]
    # The audit keeps texts decoded without special tokens: a sample whose re-encoded length differs from the
    # recorded one had a special token in it (dropped by decoding); every other one gives back its sampled ids.
    exact = np.array([len(r) for r in responses]) == audit["length"].to_numpy()
    assert exact.mean() > 0.8, exact.mean()
    kept = np.flatnonzero(exact)
    with torch.no_grad():
        logps, _ = chunked_sequence_logprobs(model, [prompts[i] for i in kept], [responses[i] for i in kept], tokenizer.pad_token_id, 64)
    assert np.allclose(logps.double().numpy(), audit["policy_logp"].to_numpy()[kept], atol=1e-4, rtol=1e-5)


def test_a_tracker_that_goes_down_mid_sweep_is_reported_and_never_raises(tracked, mlflow_server, capsys):
    """Last in the module: it stops the MLflow server."""
    from ray.tune.experiment import Trial

    from overopt.sweep.tracking import MLflowTracker

    _, experiment, _ = tracked
    record = json.loads((experiment / "tracking/mlflow.json").read_text())
    tracker = MLflowTracker(str(experiment), record)
    tracker.setup()
    trial = Trial("alignment_trial", config={"trial": {"objective": "dpo"}}, stub=True)
    row = json.loads(sorted((experiment / "rows").glob("*/step_*.json"))[0].read_text())
    tracker.log_trial_start(trial)
    tracker.log_trial_result(1, trial, row)
    assert not tracker.failed
    os.killpg(mlflow_server[1].pid, 15)
    mlflow_server[1].wait(timeout=30)
    started = time.time()
    tracker.log_trial_result(2, trial, {**row, "step": row["step"] + 1})
    assert tracker.failed and time.time() - started < 120
    tracker.log_trial_result(3, trial, {**row, "step": row["step"] + 2})  # off now: returns at once
    tracker.log_trial_end(trial)
    said = capsys.readouterr().out
    assert "tracking: MLflow failed while logging a row" in said and "No row is lost" in said and str(experiment / "rows") in said
