"""A mini sweep end to end on a local Ray, with every tracker on: configs/smoke.yaml with 2 objectives x 2
betas (SFT stage, pairs, Tune trials of Ray Train + DeepSpeed ZeRO-3, the Ray Data evaluation), then its
rows, results table, fits, plots and report; each tracker read back with its own reader; its kept
policies exported as Hugging Face models. One sweep serves all of it (each of these was a sweep of
its own, and CI paid for each).

    rows         every evaluation a row with its config; step 0 is the reference; a rerun reuses it all;
                 Tune's own ExperimentAnalysis opens the experiment
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
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from local_ray_cluster import free_ports

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
    # Unix times stamped on the first checkpoint a worker group hands over (the start-up's phases): one row only.
    "worker_started_at",
    "engine_ready_at",
    "checkpoint_ready_at",
    "beta",
    "seed",
    "step",
}


REQUIRED_COLUMNS = [
    "objective",
    "beta",
    "size",
    "seed",
    "step",
    "epoch_fraction",
    "samples_seen",
    "kl",
    "kl_se",
    "d",
    "win_rate",
    "win_rate_low",
    "win_rate_high",
    "gold_reward",
    "mean_length",
    "truncation_rate",
    "loss",
    "implicit_accuracy",
    "chosen_log_ratio",
    "rejected_log_ratio",
    "stop_reason",
]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow")
    port = free_ports(1)[0]
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
            "name=mini",
            "train.objectives=[dpo, ipo]",
            "train.betas={dpo: [0.1, 1.0], ipo: [0.1, 1.0]}",
            "sweep.stopper.patience_epochs=100",  # every trial to its end: 4 rows each
            f"tracking.mlflow.tracking_uri={uri}",
            "tracking.wandb.project=overopt-test",
            "tracking.wandb.mode=offline",
            "tracking.tensorboard=true",
        ],
    )
    os.environ["WANDB_SILENT"] = "true"  # no banner per run in the test log
    experiment = Path(run_sweep(cfg))
    smoke_stages.keep(out)
    analyze(experiment, n_bootstrap=20)  # as jobs/scale_sweep.py does after the sweep (fewer bootstrap draws)
    publish_analysis(str(experiment))  # what jobs/scale_sweep.py and jobs/analyze.py do after the analysis
    results = pd.read_parquet(experiment / "results.parquet")
    return cfg, experiment, results


def test_every_evaluation_is_a_row_with_its_config(tracked):
    cfg, experiment, _ = tracked
    results = pd.read_parquet(experiment / "results.parquet")
    assert set(REQUIRED_COLUMNS) <= set(results.columns)
    # 4 trials x evaluations at epoch 0, 1/4, 1/2 and 1 (about 6 steps per epoch)
    assert len(results) == 4 * 4
    assert sorted(results.groupby(["objective", "beta"]).size().tolist()) == [4, 4, 4, 4]
    steps = sorted(results["step"].unique().tolist())
    assert len(steps) == 4 and steps[0] == 0
    assert results["epoch_fraction"].max() == 1.0
    assert (results["stop_reason"] == "completed").all()
    assert load_config(experiment / "config.yaml") == cfg  # the resolved config is saved beside the rows
    trained = results[results["step"] > 0]
    assert trained["loss"].notna().all()
    # Each evaluation samples afresh: one step from the reference, the KL estimate is ~0 and may dip below
    # it by its noise (d clips it, kl_negative flags it); by the end of the epoch every trial has moved.
    assert (trained["kl"] > -3 * trained["kl_se"] - 1e-6).all()
    assert (results[results["epoch_fraction"] == 1.0]["kl"] > 0).all()


def test_step_zero_is_the_reference(tracked):
    _, experiment, _ = tracked
    step0 = pd.read_parquet(experiment / "results.parquet").query("step == 0")
    for row in step0.itertuples():
        assert abs(row.kl) <= 2 * row.kl_se + 1e-6, "KL of the reference to itself is 0 within its SE"
    for audit in (experiment / "audit").glob("*/step_000000.parquet"):
        samples = pd.read_parquet(audit)  # the policy at step 0 is the reference: the same log-prob for every sample
        assert samples["policy_logp"].to_numpy() == pytest.approx(samples["reference_logp"].to_numpy(), abs=1e-5)
    # The reference judged against its own samples wins half the time in expectation over the baseline's
    # draw. Every trial is judged against the same single draw (one reference sample per prompt), so the
    # trials' step-0 win rates move together with it: on 256 prompts its mean gold reward varies by ~0.012
    # between draws (~0.04 in win rate). Pooled over the trials, the win rate is within 0.1 of 0.5.
    assert abs(step0["win_rate"].mean() - 0.5) < 0.1, step0["win_rate"].tolist()


def test_analysis_writes_fits_plots_and_report(tracked):
    _, experiment, _ = tracked
    report = experiment / "report.md"  # the fixture's analysis, the one sent to the trackers
    fits = json.loads((experiment / "fits.json").read_text())
    assert set(fits["fits"]) == {"dpo/tiny", "ipo/tiny"}
    assert set(fits["fits"]["dpo/tiny"]) == {"rl", "bon", "quadratic"}
    for name in ("win_rate_vs_d.png", "win_rate_vs_epoch.png", "length_vs_d.png"):
        assert (experiment / name).stat().st_size > 10_000
    text = report.read_text()
    assert "## dpo" in text and "## ipo" in text and "RL d(a - b ln d)" in text


def test_rerun_reuses_everything(tracked):
    from overopt.sweep.run import run_sweep

    cfg, experiment, _ = tracked
    started = time.time()
    assert Path(run_sweep(cfg)) == experiment
    assert time.time() - started < 5


def test_the_tune_experiment_opens_with_rays_own_tools(tracked):
    """docs/clusters.md: one dataframe row per evaluation from Tune's own files, no overopt code."""
    from ray.tune import ExperimentAnalysis

    _, experiment, _ = tracked
    analysis = ExperimentAnalysis(str(experiment / "tune"))
    frame = pd.concat(analysis.trial_dataframes.values(), ignore_index=True)
    assert len(frame) == 16  # 4 trials x 4 evaluations, as in results.parquet
    assert {"objective", "beta", "size", "seed", "step", "kl", "win_rate"} <= set(frame.columns)
    assert sorted(frame.groupby(["objective", "beta"]).size().tolist()) == [4, 4, 4, 4]


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

    cfg, experiment, results = tracked
    client = MlflowClient(tracking_uri=mlflow_server[0])
    record = json.loads((experiment / "tracking/mlflow.json").read_text())
    mlflow_experiment = client.get_experiment_by_name(cfg.name)  # tracking.mlflow.experiment_name unset: the config's name
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
