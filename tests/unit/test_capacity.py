"""A sweep that cannot fit its cluster says so before anything starts; concurrency is capped at what fits."""

import pytest

from overopt.config import load_config
from overopt.sweep.capacity import concurrency_that_fits

SMOKE = "configs/smoke.yaml"


def _smoke(*overrides):
    from pathlib import Path

    return load_config(Path(__file__).resolve().parents[2] / SMOKE, list(overrides))


@pytest.mark.parametrize("cpus, expected", [(6, 1), (10, 2), (40, 2)])
def test_trials_run_at_once_only_as_far_as_reservations_and_workers_fit_together(cpus, expected):
    # A smoke trial holds 5 CPUs: its driver and 2 evaluation bundles (Tune's reservation) + 2 Train workers.
    # On 6 CPUs two trials' reservations (3 + 3) would leave no CPU for either's workers: one at a time.
    concurrency, problems = concurrency_that_fits(_smoke(), {"CPU": cpus})
    assert (concurrency, problems) == (expected, [])


def test_a_trial_that_can_never_be_placed_is_named_with_what_it_asks_and_what_the_cluster_has():
    concurrency, problems = concurrency_that_fits(_smoke(), {"CPU": 4})
    assert concurrency == 0
    assert problems == [
        "one trial needs CPU 5 (the cluster has 4) (its driver, 2 evaluation bundles and 2 Train workers): "
        "lower train.num_workers, evaluation.tasks or evaluation.max_in_flight, or use a larger cluster"
    ]
    _, problems = concurrency_that_fits(_smoke(), {"CPU": 1})
    assert problems[0].startswith("the SFT stage needs CPU 2 (the cluster has 1)")
    _, problems = concurrency_that_fits(_smoke("train.use_gpu=true", "models.dtype=float32"), {"CPU": 64})
    assert any("GPU" in problem for problem in problems)


def test_an_autoscaling_clusters_capacity_is_its_head_plus_each_worker_type_at_its_maximum():
    from pathlib import Path

    import yaml

    from overopt.sweep.capacity import node_types_capacity

    cluster = Path(__file__).resolve().parents[2] / "cluster"
    local = yaml.safe_load((cluster / "local-autoscaling.yaml").read_text())
    assert node_types_capacity(local) == {"CPU": 10.0}  # head 0 + 2 nodes x 5; object store memory is not a resource asked for
    assert concurrency_that_fits(_smoke(), node_types_capacity(local)) == (2, [])
    aws = yaml.safe_load((cluster / "aws.yaml").read_text())
    types = aws["available_node_types"]
    expected_gpus = sum(t["resources"].get("GPU", 0) * t["max_workers"] for name, t in types.items() if name != aws["head_node_type"])
    assert node_types_capacity(aws)["GPU"] == expected_gpus > 0
