"""The DegradationStopper inside a real Tune run: a declining trial stops early, an improving one runs on."""

import sys

import pytest
import ray.cloudpickle

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SEQUENCES = {
    "declining": [0.50, 0.60, 0.70, 0.62, 0.60, 0.55, 0.50, 0.45, 0.40, 0.35],
    "improving": [0.50, 0.55, 0.60, 0.62, 0.65, 0.66, 0.70, 0.72, 0.75, 0.80],
}


def _reporter(config):
    from ray import tune

    for step, win in enumerate(SEQUENCES[config["kind"]]):
        tune.report({"win_rate": win, "kl": float(step), "step": step, "trial_name": config["kind"]})


def test_stopper_ends_only_the_declining_trial(ray_local, tmp_path):
    from ray import tune

    from overopt.sweep.stopper import DegradationStopper

    stopper = DegradationStopper(margin=0.05, patience=3, log_path=tmp_path / "stops.jsonl")
    grid = tune.Tuner(
        _reporter,
        param_space={"kind": tune.grid_search(list(SEQUENCES))},
        run_config=tune.RunConfig(storage_path=str(tmp_path), stop=stopper, verbose=0),
    ).fit()
    steps = {r.config["kind"]: r.metrics_dataframe["step"].tolist() for r in grid}
    # best 0.70 at step 2; 0.62, 0.60, 0.55 are all > 0.05 below it -> stopped at step 5
    assert steps["declining"] == [0, 1, 2, 3, 4, 5]
    assert steps["improving"] == list(range(10))
    assert set(stopper.reasons) == {"declining"} and "degraded" in stopper.reasons["declining"]
    assert "degraded" in (tmp_path / "stops.jsonl").read_text()
