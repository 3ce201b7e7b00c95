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
    fractions = evaluation_fractions(cfg.train.epochs, cfg.evaluation.early_fractions, cfg.evaluation.fractions_per_epoch_1,
                                     cfg.evaluation.fractions_after_epoch_1)
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


def test_async_stopper_acts_and_records_steps_trained_past_it(async_sweep, storage):
    # A KL budget that the first trained evaluation exceeds: the stopper ends both trials there.
    _, experiment = run(storage, "sweep.stopper.kl_budget=1e-9", "sweep.stopper.patience_epochs=0")
    frame = pd.read_parquet(experiment / "results.parquet")
    assert frame.groupby("trial_name")["stop_reason"].first().str.startswith("kl budget").all()
    for path in (experiment / "stops").glob("*.json"):
        stop = json.loads(path.read_text())
        rows = frame[frame["trial_name"] == stop["trial_name"]]
        last = rows.iloc[-1]
        assert last["step"] < rows["step"].max() or len(rows) < 4  # stopped before the planned end
        assert last["trained_steps_at_report"] >= last["step"]  # how far training had got is on record
        assert stop["step"] == last["step"] and stop["trained_steps_at_report"] == last["trained_steps_at_report"]


def test_sharded_reference_trains_and_scores_like_the_cached_one(async_sweep, storage):
    # reference.mode: sharded: no log-prob cache; the workers hold pi_ref as a frozen ZeRO-3 partition.
    # evaluation.scoring: training_workers: they also score every evaluation's samples (policy and
    # reference), as models too big for one device need; the evaluation tasks load neither to score.
    _, cached = async_sweep
    _, sharded = run(storage, "reference.mode=sharded", "evaluation.mode=inline", "evaluation.scoring=training_workers", "name=smoke-sharded")
    pairs_files = list((storage / "cache").rglob("pairs.parquet"))
    assert len(pairs_files) == 2  # the cached pairs and the sharded run's pairs without reference log-probs
    assert sorted("reference_chosen_logps" in pq.read_schema(p).names for p in pairs_files) == [False, True]
    columns = ["objective", "beta", "step", "loss", "chosen_log_ratio", "rejected_log_ratio"]
    a = pd.read_parquet(cached / "results.parquet")[columns].sort_values(["beta", "step"]).reset_index(drop=True)
    b = pd.read_parquet(sharded / "results.parquet")[columns].sort_values(["beta", "step"]).reset_index(drop=True)
    first = a["step"] == 1  # the first interval's diagnostics: one optimizer step from the same weights
    assert (b["step"] == a["step"]).all()
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
                assert audit_b[column].to_numpy()[same] == pytest.approx(audit_a[column].to_numpy()[same], abs=tolerance), (beta, step, column)
        trained = pd.read_parquet(sharded / "audit" / name_b / f"step_{first:06d}.parquet")
        assert (trained["policy_logp"] != trained["reference_logp"]).mean() > 0.9  # the policy's own log-probs, not the reference's
