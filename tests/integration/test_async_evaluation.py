"""Evaluation off the training path (``evaluation.mode: async``) on a local Ray: training goes on while
checkpoints are evaluated, yet every trial's rows land exactly once, in step order, and a trial ends
only after its last evaluation is in; the stopper still acts on each evaluation as it arrives, and the
steps trained past its decision are recorded (``trained_steps_at_report``)."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from overopt.config import load_config
from overopt.schedule import evaluation_fractions, evaluation_steps

pytestmark = pytest.mark.integration

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def run(storage: Path, *overrides: str):
    from overopt.sweep.run import run_sweep

    cfg = load_config(SMOKE, [f"storage={storage}", "evaluation.mode=async", "evaluation.max_in_flight=2", *overrides])
    return cfg, Path(run_sweep(cfg))


@pytest.fixture(scope="module")
def storage(tmp_path_factory, smoke_stages):
    storage = tmp_path_factory.mktemp("async")  # shared: later sweeps reuse the first one's stages
    smoke_stages.seed(storage)
    return storage


@pytest.fixture(scope="module")
def async_sweep(ray_local, storage, smoke_stages):
    swept = run(storage)
    smoke_stages.keep(storage)
    return swept


def test_async_rows_are_exactly_once_in_step_order(async_sweep):
    cfg, experiment = async_sweep
    frame = pd.read_parquet(experiment / "results.parquet")
    fractions = evaluation_fractions(
        cfg.train.epochs, cfg.evaluation.early_fractions, cfg.evaluation.fractions_per_epoch_1, cfg.evaluation.fractions_after_epoch_1
    )
    for name, rows in frame.groupby("trial_name"):
        steps_per_epoch = round(rows["step"].iloc[-1] / rows["epoch_fraction"].iloc[-1])
        planned = sorted(evaluation_steps(fractions, steps_per_epoch))
        files = sorted(p.stem for p in (experiment / "rows" / name).glob("*.json"))
        assert files == [f"step_{s:06d}" for s in planned]  # one file per evaluation: none lost, none twice
        assert rows["step"].tolist() == planned and rows["stop_reason"].eq("completed").all()
        assert rows["epoch_fraction"].iloc[-1] == cfg.train.epochs  # the trial ended after its last evaluation
        reported = [json.loads((experiment / "rows" / name / f"{f}.json").read_text())["reported_at"] for f in files]
        assert reported == sorted(reported)  # reported to Tune in step order
        assert (rows["trained_steps_at_report"] >= rows["step"]).all()
    # Training did not wait for each evaluation: some row was reported after later steps were trained.
    assert (frame["trained_steps_at_report"] > frame["step"]).any()
    assert not (experiment / "checkpoints").exists()  # every handed-over checkpoint was evaluated, then removed


def _check_recorded_stops(experiment, frame):
    """Every stop is read from its record: the row it was decided on is the trial's last row, and the
    record and that row say where training ended."""
    stops = {json.loads(p.read_text())["trial_name"]: json.loads(p.read_text()) for p in (experiment / "stops").glob("*.json")}
    assert set(stops) == set(frame["trial_name"])
    for name, stop in stops.items():
        rows = frame[frame["trial_name"] == name]
        last = rows.iloc[-1]
        assert stop["step"] == last["step"] and stop["reason"] == last["stop_reason"]
        assert stop["trained_steps"] == last["trained_steps_at_report"] == last["trained_steps"] >= stop["step"]
        assert stop["trained_steps_at_decision"] <= stop["trained_steps"]
        assert (rows["stopped_at_step"] == stop["step"]).all()
    return stops


def test_async_stops_are_decided_by_the_trial_driver_and_recorded_with_where_training_ended(async_sweep, storage):
    # A KL budget that the first trained evaluation exceeds: each trial's driver stops it there, with two
    # evaluations in flight; the later one (if any) is discarded and named in the record.
    _, experiment = run(storage, "sweep.stopper.kl_budget=1e-9", "sweep.stopper.patience_epochs=0")
    frame = pd.read_parquet(experiment / "results.parquet")
    assert frame.groupby("trial_name")["stop_reason"].first().str.startswith("kl budget").all()
    stops = _check_recorded_stops(experiment, frame)
    for stop in stops.values():
        rows = frame[frame["trial_name"] == stop["trial_name"]]
        assert (rows["kl"].iloc[:-1] <= 1e-9).all() and rows["kl"].iloc[-1] > 1e-9  # stopped at the first row past the budget
        assert all(step > stop["step"] for step in stop["discarded_steps"])
        assert stop["trained_steps"] < 6  # training ended early (6 steps planned), at most a few steps past the stop


@pytest.fixture(scope="module")
def sharded_inline_sweep(async_sweep, storage):
    """The same trials inline, with the reference sharded across the training workers, which also score the
    samples, and a KL budget that the first trained evaluation exceeds. Its own name: evaluation.mode is outside
    the experiment's hash."""
    _, experiment = run(
        storage,
        "name=smoke-sharded",
        "reference.mode=sharded",
        "evaluation.mode=inline",
        "evaluation.scoring=training_workers",
        "sweep.stopper.kl_budget=1e-9",
        "sweep.stopper.patience_epochs=0",
    )
    return experiment


def test_inline_stops_end_training_at_the_step_they_are_decided_on(sharded_inline_sweep):
    frame = pd.read_parquet(sharded_inline_sweep / "results.parquet")
    assert frame.groupby("trial_name")["stop_reason"].first().str.startswith("kl budget").all()
    for stop in _check_recorded_stops(sharded_inline_sweep, frame).values():
        assert stop["trained_steps"] == stop["step"] and stop["discarded_steps"] == []  # training waited for the evaluation


def test_a_screen_and_a_two_worker_zero3_trial_of_the_same_config_train_alike(async_sweep):
    """The one-process screen (jobs/screen.py) runs the sweep's own loop on the same data order: the
    first interval's losses of one process and of 2 ZeRO-3 workers agree to fp32 tolerance."""
    from overopt.data.sources import synthetic_task
    from overopt.evaluate.judges import build_judge
    from overopt.local_trial import LocalTrial, run_local_trial
    from overopt.storage import Storage
    from overopt.sweep.stages import prepare_size

    cfg, experiment = async_sweep
    store = Storage(cfg.storage)
    data, _ = prepare_size(cfg, "tiny", store, store.uri("unused"), log=lambda line: None)  # cached: no Ray needed
    fractions = evaluation_fractions(
        cfg.train.epochs, cfg.evaluation.early_fractions, cfg.evaluation.fractions_per_epoch_1, cfg.evaluation.fractions_after_epoch_1
    )
    task = synthetic_task(cfg.data)
    screened = run_local_trial(
        LocalTrial("dpo", 0.1, "tiny", 0),
        cfg.train,
        cfg.evaluation,
        fractions,
        data.reference,
        data.tokenizer,
        Storage(data.pairs_path).read_parquet(""),
        Storage(data.eval_path).read_parquet(""),
        build_judge(cfg.evaluation.judge, task, cfg.models),
        cfg.models,
        experiment_seed=cfg.seed,
        log=lambda line: None,
    )
    swept = pd.read_parquet(experiment / "results.parquet").query("beta == 0.1").sort_values("step")
    first = int(swept.loc[swept["step"] > 0, "step"].min())
    screen_row = next(row for row in screened if row["step"] == first)
    sweep_row = swept[swept["step"] == first].iloc[0]
    # Not implicit_accuracy: at the first steps h is ~0 and its sign is float noise of how each side batches.
    for column in ("loss", "reward_margin", "chosen_log_ratio", "rejected_log_ratio", "grad_norm"):
        assert screen_row[column] == pytest.approx(sweep_row[column], rel=1e-4, abs=1e-5), column


def test_sharded_reference_trains_and_scores_like_the_cached_one(async_sweep, sharded_inline_sweep, storage):
    # reference.mode: sharded: no log-prob cache; the workers hold pi_ref as a frozen ZeRO-3 partition.
    # evaluation.scoring: training_workers: they also score every evaluation's samples (policy and
    # reference), as models too big for one device need; the evaluation tasks load neither to score.
    # The sharded trials stopped at their first evaluation past the KL budget: compared where both have rows.
    _, cached = async_sweep
    sharded = sharded_inline_sweep
    pairs_files = list((storage / "cache").rglob("pairs.parquet"))
    assert len(pairs_files) == 2  # the cached pairs and the sharded run's pairs without reference log-probs
    assert sorted("reference_chosen_logps" in pq.read_schema(p).names for p in pairs_files) == [False, True]
    columns = ["objective", "beta", "step", "loss", "chosen_log_ratio", "rejected_log_ratio"]
    b = pd.read_parquet(sharded / "results.parquet")[columns].sort_values(["beta", "step"]).reset_index(drop=True)
    a = pd.read_parquet(cached / "results.parquet")[columns].merge(b[["beta", "step"]], on=["beta", "step"])
    a = a.sort_values(["beta", "step"]).reset_index(drop=True)
    assert (b["step"] == a["step"]).all() and (b["beta"] == a["beta"]).all()  # every sharded row has its cached one
    first = a["step"] == 1  # the first interval's diagnostics: one optimizer step from the same weights
    assert first.sum() == 2
    assert b.loc[first, "loss"].to_numpy() == pytest.approx(a.loc[first, "loss"].to_numpy(), abs=1e-4)
    assert b.loc[first, "chosen_log_ratio"].to_numpy() == pytest.approx(a.loc[first, "chosen_log_ratio"].to_numpy(), abs=1e-4)
    # The samples' log-probs: scored by both training ranks, equal to the evaluation tasks' own scores of
    # the same samples at step 0 (one stream per trial: the same draws in both sweeps, from the same
    # weights), and close at the first evaluation after training started (the same training in both).
    rows_a, rows_b = (pd.read_parquet(p / "results.parquet") for p in (cached, sharded))
    assert rows_b["scoring_ranks"].eq(2).all() and rows_a["scoring_ranks"].eq(0).all()
    for beta in rows_a["beta"].unique():
        name_a, name_b = (rows.loc[rows["beta"] == beta, "trial_name"].iloc[0] for rows in (rows_a, rows_b))
        first = int(rows_a.loc[rows_a["step"] > 0, "step"].min())  # the first evaluation after training started
        for step, tolerance in ((0, 1e-4), (first, 1e-2)):
            audit_a = pd.read_parquet(cached / "audit" / name_a / f"step_{step:06d}.parquet").sort_values("index")
            audit_b = pd.read_parquet(sharded / "audit" / name_b / f"step_{step:06d}.parquet").sort_values("index")
            if step == 0:
                assert audit_b["response"].tolist() == audit_a["response"].tolist()
                assert audit_b["length"].tolist() == audit_a["length"].tolist()
            same = audit_b["response"].to_numpy() == audit_a["response"].to_numpy()  # after training: where the samples agree
            assert same.mean() > 0.5
            for column in ("policy_logp", "reference_logp"):
                assert audit_b[column].to_numpy()[same] == pytest.approx(audit_a[column].to_numpy()[same], abs=tolerance), (
                    beta,
                    step,
                    column,
                )
        trained = pd.read_parquet(sharded / "audit" / name_b / f"step_{first:06d}.parquet")
        assert (trained["policy_logp"] != trained["reference_logp"]).mean() > 0.9  # the policy's own log-probs, not the reference's
