"""What a trial reserves for its evaluations: a bundle per scoring task and per vLLM engine it may hold
at once, each able to hold either (sweep/trial.py ``trial_resources``, overopt/trial_plan.py ``resources_per_trial``)."""

from overopt.config import load_config
from overopt.trial_plan import bundles_per_trial, evaluation_bundle, resources_per_trial, vllm_engines


def test_hf_generation_reserves_the_scoring_tasks_only():
    cfg = load_config(None, ["evaluation.tasks=2", "evaluation.cpus_per_task=0.5"])
    assert vllm_engines(cfg.evaluation) == 0 and bundles_per_trial(cfg.evaluation) == 2
    assert evaluation_bundle(cfg.evaluation, use_gpu=False) == {"CPU": 0.5}
    # driver 1 + 2 tasks x 0.5 + 2 Train workers x 1 CPU
    assert resources_per_trial(cfg) == {"CPU": 1 + 1.0 + 2 * cfg.train.cpus_per_worker}


def test_vllm_generation_adds_one_engine_per_open_evaluation_in_bundles_that_fit_either():
    inline = load_config(None, ["evaluation.generation.backend=vllm", "evaluation.tasks=2", "evaluation.cpus_per_task=0.5"])
    assert vllm_engines(inline.evaluation) == 1 and bundles_per_trial(inline.evaluation) == 3
    assert evaluation_bundle(inline.evaluation, use_gpu=False) == {"CPU": 1.0}  # an engine takes 1 CPU: every bundle can hold one
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
    assert vllm_engines(in_flight.evaluation) == 2 and bundles_per_trial(in_flight.evaluation) == 2 * 2 + 2
    assert evaluation_bundle(in_flight.evaluation, use_gpu=False) == {"CPU": 1.0, "GPU": 0.5}
    resources = resources_per_trial(in_flight)
    assert resources["GPU"] == 6 * 0.5 and resources["CPU"] == 1 + 6 * 1.0 + 2 * in_flight.train.cpus_per_worker


def test_a_kept_generation_engine_and_a_vllm_judge_each_get_a_bundle_per_open_evaluation():
    # The trial keeps its generation engine from evaluation to evaluation, so the judge's engine, started for
    # each evaluation's judging stage, cannot take its bundle: it gets one of its own.
    both = [
        "evaluation.generation.backend=vllm",
        "evaluation.judge.type=llm",
        "evaluation.judge.transport=vllm",
        "evaluation.judge.model=/models/judge",
        "evaluation.tasks=2",
    ]
    inline = load_config(None, both)
    assert vllm_engines(inline.evaluation) == 2 and bundles_per_trial(inline.evaluation) == 2 + 2
    in_flight = load_config(None, both + ["evaluation.mode=async", "evaluation.max_in_flight=2"])
    assert vllm_engines(in_flight.evaluation) == 4 and bundles_per_trial(in_flight.evaluation) == 2 * 2 + 4
    judge_only = load_config(None, both[1:])
    assert vllm_engines(judge_only.evaluation) == 1
