"""What a sweep cost, what the degradation stopper saved, and the dry-run's estimate (analysis/measured_costs.py,
analysis/cost_estimate.py, analysis/costs.py).

Every expected number below is worked out by hand from the rows in the comments."""

import math

import pandas as pd
import pytest

from overopt.analysis.cost_estimate import SizeCounts, earlier_measurements, estimate, estimate_lines, family
from overopt.analysis.costs import experiment_costs
from overopt.analysis.measured_costs import STARTUP_PHASES, cost_totals, missing_timings, trial_costs, unit_costs
from overopt.analysis.report_sections import startup_phase_lines
from overopt.config import ExperimentConfig
from overopt.trial_plan import Holding, holding

CPU5 = Holding("CPU", workers=2, per_worker=1.0, bundles=2, per_bundle=1.0, driver=1.0)  # 2 + 2 + 1 = 5 CPUs
FRACTIONS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]  # 20 steps per epoch: evaluations at steps 0, 5, 10, 20, 30, 40


def _row(trial, step, started, reported, evaluation, interval, wait, planned, **extra):
    return {
        "trial_name": trial,
        "objective": "dpo",
        "beta": 0.1,
        "size": "tiny",
        "seed": 0,
        "step": step,
        "epoch_fraction": step / 20,
        "trial_started_at": started,
        "reported_at": reported,
        "evaluation_seconds": evaluation,
        "interval_seconds": interval,
        "evaluation_wait_seconds": wait,
        "planned_steps": planned,
        "trained_steps_at_report": step,
        **extra,
    }


def _rows():
    """A: ran to its end (20 steps). B: stopped at step 10 of 40 by its driver."""
    a = [
        _row("A", 0, 1000.0, 1030.0, 4.0, 0.1, 0.0, 20),  # start-up 1030 - 1000 - 4 = 26
        _row("A", 10, 1000.0, 1045.0, 2.0, 12.0, 5.0, 20),  # training 12 - 5 = 7
        _row("A", 20, 1000.0, 1058.0, 3.0, 10.0, 3.0, 20),  # training 7; wall 58
    ]
    stop = {"stopped_at_step": 10, "trained_steps": 10}
    b = [
        _row("B", 0, 2000.0, 2040.0, 6.0, 0.0, 0.0, 40, **stop),  # start-up 2040 - 2000 - 6 = 34
        _row("B", 5, 2000.0, 2050.0, 2.0, 8.0, 6.0, 40, **stop),  # training 2
        _row("B", 10, 2000.0, 2062.0, 4.0, 9.0, 2.0, 40, **stop),  # training 7; wall 62
    ]
    frame = pd.DataFrame(a + b)
    frame.loc[frame["trial_name"] == "A", ["stopped_at_step", "trained_steps"]] = math.nan
    return frame


def test_each_trial_split_into_start_up_training_and_evaluation():
    costs = trial_costs(_rows(), CPU5, FRACTIONS).set_index("trial_name")
    a, b = costs.loc["A"], costs.loc["B"]
    assert a["wall_seconds"] == pytest.approx(58)
    assert a["startup_seconds"] == pytest.approx(26)
    assert a["training_seconds"] == pytest.approx(14)
    assert a["evaluation_seconds"] == pytest.approx(58 - 26 - 14)
    assert a["evaluating_seconds"] == pytest.approx(9)  # 4 + 2 + 3
    assert a["evaluating_share"] == pytest.approx(9 / 58)
    assert a["seconds_per_step"] == pytest.approx(14 / 20)
    assert a["seconds_per_evaluation"] == pytest.approx(3)
    assert a["worker_seconds"] == pytest.approx(58 * 5)
    assert not a["stopped"] and math.isnan(a["saved_worker_seconds"])
    assert b["startup_seconds"] == pytest.approx(34)
    assert b["training_seconds"] == pytest.approx(9)
    assert b["seconds_per_step"] == pytest.approx(0.9)
    assert b["seconds_per_evaluation"] == pytest.approx(4)  # median of 6, 2, 4
    assert b["worker_seconds"] == pytest.approx(62 * 5)


def test_the_start_up_is_split_into_phases_from_the_workers_stamps():
    rows = _rows()
    # A's step 0: worker function running at 1012, engine ready at 1020, first checkpoint in storage at 1023;
    # its start-up is 26 s (above): 12 + 8 + 3 + the rest 3. B carries no stamps (an older run).
    first = (rows["trial_name"] == "A") & (rows["step"] == 0)
    rows.loc[first, ["worker_started_at", "engine_ready_at", "checkpoint_ready_at"]] = [1012.0, 1020.0, 1023.0]
    costs = trial_costs(rows, CPU5, FRACTIONS).set_index("trial_name")
    a, b = costs.loc["A"], costs.loc["B"]
    assert [a[c] for c in STARTUP_PHASES] == pytest.approx([12, 8, 3, 3])
    assert all(math.isnan(b[c]) for c in STARTUP_PHASES)
    assert startup_phase_lines(costs.reset_index()) == [
        "- Where the start-up went, the first trial to start: worker group 12.0 s, model + DeepSpeed 8.0 s, first checkpoint 3.0 s, rest 3.0 s."
    ]
    assert startup_phase_lines(trial_costs(_rows(), CPU5, FRACTIONS)) == []  # no stamps, no line


def test_a_stopped_trial_saved_its_remaining_steps_and_the_evaluations_it_never_ran():
    b = trial_costs(_rows(), CPU5, FRACTIONS).set_index("trial_name").loc["B"]
    assert b["stopped"]
    assert b["steps_not_trained"] == 30  # planned 40 - trained 10
    assert b["evaluations_not_run"] == 3  # steps 20, 30, 40
    assert b["saved_seconds"] == pytest.approx(30 * 0.9 + 3 * 4)  # 39
    assert b["saved_worker_seconds"] == pytest.approx(39 * 5)
    # Without the schedule only the steps are counted.
    unscheduled = trial_costs(_rows(), CPU5, None).set_index("trial_name").loc["B"]
    assert unscheduled["saved_seconds"] == pytest.approx(27) and math.isnan(unscheduled["evaluations_not_run"])


def test_totals_medians_and_what_stopping_saved():
    rows = _rows()
    totals = cost_totals(trial_costs(rows, CPU5, FRACTIONS), rows, CPU5)
    assert totals.trials == 2 and totals.stopped == 1
    assert totals.worker_seconds == pytest.approx(600)  # (58 + 62) x 5
    assert totals.startup_worker_seconds == pytest.approx((26 + 34) * 5)
    assert totals.training_worker_seconds == pytest.approx((14 + 9) * 5)
    assert totals.evaluation_worker_seconds == pytest.approx((18 + 19) * 5)
    phases = totals.startup_worker_seconds + totals.training_worker_seconds + totals.evaluation_worker_seconds
    assert phases == pytest.approx(totals.worker_seconds)
    assert totals.busy_training_worker_seconds == pytest.approx(23 * 2)  # training seconds x the workers' 2 CPUs
    assert totals.busy_evaluation_worker_seconds == pytest.approx(21 * 2)  # evaluations' seconds x the bundles' 2 CPUs
    assert totals.median_startup_seconds == pytest.approx(30)
    assert totals.median_seconds_per_evaluation == pytest.approx(3.5)  # 2 2 3 4 4 6
    assert totals.evaluating_share == pytest.approx(21 / 120)
    assert totals.median_evaluating_share == pytest.approx((9 / 58 + 12 / 62) / 2)
    assert totals.saved_worker_seconds == pytest.approx(195)
    assert totals.unstopped_worker_seconds == pytest.approx(795)
    assert totals.saved_share == pytest.approx(195 / 795)
    assert totals.to_dict()["held"]["total"] == 5


def test_a_trial_run_by_two_drivers_counts_each_drivers_span():
    rows = pd.DataFrame(
        [
            _row("C", 0, 100.0, 120.0, 2.0, 0.0, 0.0, 20),  # driver 1: start-up 18
            _row("C", 10, 100.0, 130.0, 2.0, 5.0, 2.0, 20),  # training 3; driver 1's wall 30
            _row("C", 20, 200.0, 230.0, 3.0, 6.0, 1.0, 20),  # driver 2: training 5, start-up 230 - 200 - 3 - 5 = 22
        ]
    )
    c = trial_costs(rows, CPU5).iloc[0]
    assert c["drivers"] == 2
    assert c["wall_seconds"] == pytest.approx(60)
    assert c["startup_seconds"] == pytest.approx(40)
    assert c["training_seconds"] == pytest.approx(8)


def test_rows_without_timings_are_named():
    screen = _rows().drop(columns=["trial_started_at", "evaluation_wait_seconds"])
    assert missing_timings(screen) == ["trial_started_at", "evaluation_wait_seconds"]
    with pytest.raises(ValueError, match="trial_started_at"):
        trial_costs(screen, CPU5)


def test_what_a_trial_holds_follows_the_config():
    from overopt.trial_plan import resources_per_trial

    cpu = ExperimentConfig()
    assert holding(cpu) == CPU5  # 2 workers x 1 CPU, 2 scoring tasks x 1 CPU, the driver
    assert holding(cpu).total == resources_per_trial(cpu)["CPU"]
    gpu = ExperimentConfig.model_validate({"train": {"use_gpu": True, "num_workers": 2, "cpus_per_worker": 4}, "evaluation": {"tasks": 1}})
    held = holding(gpu)
    assert (held.unit, held.training, held.evaluation, held.driver) == ("GPU", 2, 1, 0)  # GPU-seconds: CPUs not counted
    assert held.total == resources_per_trial(gpu)["GPU"]
    assert held.text() == "the 3 GPUs a trial holds: 2 training workers x 1 GPU + 1 evaluation bundles x 1 GPU (their CPUs not counted)"


def test_the_estimate_multiplies_the_plans_counts_by_the_measured_seconds():
    units = unit_costs(trial_costs(_rows(), CPU5, FRACTIONS))
    # tiny: medians over A and B: start-up (26 + 34) / 2 = 30, s/step (0.7 + 0.9) / 2 = 0.8, s/evaluation (3 + 4) / 2 = 3.5
    assert units.loc["tiny"].to_dict() == pytest.approx(
        {"trials": 2, "startup_seconds": 30, "seconds_per_step": 0.8, "seconds_per_evaluation": 3.5}
    )
    table = estimate({"tiny": SizeCounts(4, 100, 6), "small": SizeCounts(2, 100, 6)}, units, CPU5).set_index("size")
    assert table.loc["tiny", "wall_seconds_per_trial"] == pytest.approx(30 + 100 * 0.8 + 6 * 3.5)  # 131
    assert table.loc["tiny", "worker_seconds"] == pytest.approx(4 * 131 * 5)
    assert table.loc["tiny", "training_worker_seconds"] == pytest.approx(4 * 80 * 5)
    assert math.isnan(table.loc["small", "worker_seconds"])  # never measured: unknown, not guessed


def test_the_config_family_leaves_out_what_only_changes_the_counts():
    base = ExperimentConfig()
    counts = ExperimentConfig.model_validate(
        {"name": "other", "train": {"epochs": 3, "betas": {"dpo": [1.0], "ipo": [1.0], "slic": [1.0]}}}
    )
    assert family(base) == family(counts)
    assert family(base) != family(ExperimentConfig.model_validate({"train": {"num_workers": 4}}))
    assert family(base) != family(ExperimentConfig.model_validate({"evaluation": {"tasks": 4}}))


def _config(tmp_path, **train):
    return ExperimentConfig.model_validate(
        {
            "storage": str(tmp_path),
            "models": {"sizes": ["tiny"]},
            "data": {"synthetic": {"preference_pairs": 640}},  # 20 steps per epoch of 32 pairs
            "train": {"objectives": ["dpo"], "betas": {"dpo": [0.1, 1.0]}, "epochs": 1.0, **train},
            "evaluation": {"early_fractions": [], "fractions_per_epoch_1": 2},  # steps 0, 10, 20: 3 evaluations
        }
    )


def _experiment(tmp_path, name, cfg, rows):
    directory = tmp_path / name
    cfg.save(directory / "config.yaml")
    rows.to_parquet(directory / "results.parquet")
    return directory


def test_the_dry_run_prints_counts_and_unknown_seconds_without_an_earlier_experiment(tmp_path):
    cfg = _config(tmp_path)
    assert earlier_measurements(str(tmp_path), cfg) == []
    lines = "\n".join(estimate_lines({"tiny": SizeCounts(2, 20, 3)}, CPU5, [], 1, {"CPU": 5.0}, str(tmp_path)))
    assert "in all 2 trials, 40 training steps, 6 evaluations" in lines
    assert "worker slots: 1 trial(s) at once hold 5 CPU" in lines
    assert "seconds: unknown until a run measures them" in lines


def test_an_earlier_experiment_of_the_family_gives_the_estimate_the_report_compares(tmp_path):
    from overopt.analysis.report_sections import costs_section
    from overopt.sweep.plan import describe_costs, plan_sweep

    cfg = _config(tmp_path)
    earlier = _rows()[lambda f: f["trial_name"] == "A"]  # start-up 26, 0.7 s/step, 3 s/evaluation; last row at 1058
    _experiment(tmp_path, "embedded-old", _config(tmp_path, lr=1e-4), earlier)  # same family: lr changes no cost
    _experiment(tmp_path, "embedded-wide", _config(tmp_path, num_workers=4), earlier)  # another family
    late = _rows()[lambda f: f["trial_name"] == "B"]  # last row at 2062, after the new sweep started
    _experiment(tmp_path, "embedded-late", _config(tmp_path, warmup_steps=3), late)
    assert [m.experiment.rsplit("/", 1)[-1] for m in earlier_measurements(str(tmp_path), cfg)] == ["embedded-old", "embedded-late"]

    # The dry-run: 2 trials x (26 + 20 x 0.8 + 3 x 3.5) -- the latest measurement of tiny (late: B) wins: 34 + 20 x 0.9 + 3 x 4 = 64
    text = describe_costs(cfg, plan_sweep(cfg))
    assert "2 trials x 20 steps and 3 evaluations" in text
    assert "= 64 s per trial; 2 trials: 640 CPU-s" in text

    # The report of a sweep that started at 1500: only embedded-old had finished; its estimate is 2 x (26 + 14 + 9) x 5 = 490.
    rows = pd.DataFrame(
        [
            _row(trial, step, 1500.0 + offset, 1530.0 + offset + step, 2.0, 8.0 if step else 0.0, 1.0 if step else 0.0, 20)
            for offset, trial in ((0, "dpo_0.1"), (100, "dpo_1.0"))
            for step in (0, 10, 20)
        ]
    )
    directory = _experiment(tmp_path, "embedded-new", cfg, rows)
    sweep = experiment_costs(str(directory), rows)
    assert sweep.measurements == ("embedded-old",)
    assert sweep.estimate.set_index("size").loc["tiny", "worker_seconds"] == pytest.approx(490)
    # Each trial: wall 50, start-up 1530 - 1500 - 2 = 28, training 2 x 7 = 14: 250 CPU-s each, 500 in all.
    assert sweep.totals.worker_seconds == pytest.approx(500)
    text = "\n".join(costs_section(sweep))
    assert "**500 CPU-s**" in text and "stopped no trial" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| tiny ")]
    assert ["tiny", "26.0 / 28.0", "0.700 / 0.700", "3.00 / 2.00", "490", "500", "500", "1.02", "1.02"] in rows
    assert sweep.to_dict()["totals"]["worker_seconds"] == pytest.approx(500)


def test_the_report_says_why_it_has_no_costs(tmp_path):
    from overopt.analysis.report_sections import costs_section

    screen = _rows().drop(columns=["reported_at"])
    assert "Not computed: the rows carry no reported_at" in "\n".join(costs_section(experiment_costs(str(tmp_path), screen)))
