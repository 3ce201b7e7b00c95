"""What a trial reserves for its evaluations: a bundle per scoring task and per vLLM engine it may hold
at once, each able to hold either (sweep/trial.py ``trial_resources``, sweep/plan.py ``resources_per_trial``)."""

from overopt.config import load_config
from overopt.sweep.plan import resources_per_trial


def test_hf_generation_reserves_the_scoring_tasks_only():
    cfg = load_config(None, ["evaluation.tasks=2", "evaluation.cpus_per_task=0.5"])
    assert cfg.evaluation.vllm_engines == 0 and cfg.evaluation.bundles_per_trial == 2
    assert cfg.evaluation.bundle(use_gpu=False) == {"CPU": 0.5}
    # driver 1 + 2 tasks x 0.5 + 2 Train workers x 1 CPU
    assert resources_per_trial(cfg) == {"CPU": 1 + 1.0 + 2 * cfg.train.cpus_per_worker}


def test_vllm_generation_adds_one_engine_per_open_evaluation_in_bundles_that_fit_either():
    inline = load_config(None, ["evaluation.generation.backend=vllm", "evaluation.tasks=2", "evaluation.cpus_per_task=0.5"])
    assert inline.evaluation.vllm_engines == 1 and inline.evaluation.bundles_per_trial == 3
    assert inline.evaluation.bundle(use_gpu=False) == {"CPU": 1.0}  # an engine takes 1 CPU: every bundle can hold one
    in_flight = load_config(
        None,
        [
            "evaluation.generation.backend=vllm",
            "evaluation.mode=async",
            "evaluation.max_in_flight=2",
            "evaluation.tasks=2",
            "evaluation.gpus_per_task=0.5",
        ],
    )
    assert in_flight.evaluation.vllm_engines == 2 and in_flight.evaluation.bundles_per_trial == 2 * 2 + 2
    assert in_flight.evaluation.bundle(use_gpu=False) == {"CPU": 1.0, "GPU": 0.5}
    resources = resources_per_trial(in_flight)
    assert resources["GPU"] == 6 * 0.5 and resources["CPU"] == 1 + 6 * 1.0 + 2 * in_flight.train.cpus_per_worker
