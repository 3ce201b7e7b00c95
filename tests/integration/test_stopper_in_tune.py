"""The DegradationStopper inside a real Tune run: a declining trial stops early, an improving one runs on."""

import sys

import pytest
import ray.cloudpickle

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SEQUENCES = {
    "declining": [0.50, 0.60, 0.70, 0.63, 0.60, 0.55, 0.50, 0.45, 0.40, 0.35],
    "improving": [0.50, 0.55, 0.60, 0.62, 0.65, 0.66, 0.70, 0.72, 0.75, 0.80],
}


HALF_WIDTH = 0.04  # each evaluation's 95 % interval: win rate +- 0.04 (a few hundred judged prompts)


def _reporter(config):
    from ray import tune

    for step, win in enumerate(SEQUENCES[config["kind"]]):
        tune.report(
            {
                "win_rate": win,
                "win_rate_low": win - HALF_WIDTH,
                "win_rate_high": win + HALF_WIDTH,
                "kl": float(step),
                "step": step,
                "epoch_fraction": step / 8,
                "trial_name": config["kind"],
            }
        )


def test_stopper_ends_only_the_declining_trial(ray_local, tmp_path):
    from ray import tune

    from overopt.sweep.stopper import DegradationStopper

    stopper = DegradationStopper(margin=0.05, patience_epochs=0.25)
    grid = tune.Tuner(
        _reporter,
        param_space={"kind": tune.grid_search(list(SEQUENCES))},
        run_config=tune.RunConfig(storage_path=str(tmp_path), stop=stopper, verbose=0),
    ).fit()
    steps = {r.config["kind"]: r.metrics_dataframe["step"].tolist() for r in grid}
    # best 0.70 [0.66, 0.74] at step 2; 0.63 [0.59, 0.67] does not separate from it; 0.60, 0.55, 0.50
    # (steps 4, 5, 6 = epochs 0.5, 0.625, 0.75) do: the streak spans 0.25 epochs at step 6 -> stopped
    assert steps["declining"] == [0, 1, 2, 3, 4, 5, 6]
    assert steps["improving"] == list(range(10))
    assert set(stopper.reasons) == {"declining"} and "degraded" in stopper.reasons["declining"]
