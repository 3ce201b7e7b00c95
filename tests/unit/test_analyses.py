"""The report's analyses, each on a constructed results table whose answer is known."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from overopt.analysis.claims import peak_claim
from overopt.analysis.correlations import correlation, length_exploitation, training_metrics_vs_win
from overopt.analysis.fits import ScalingFit
from overopt.analysis.report import analyze
from overopt.analysis.summary import (
    binned_curve,
    fit_curves,
    held_out_comparisons,
    peak_positions,
    reference_baselines,
    size_effect,
    with_gain,
)
from overopt.schedule import evaluation_fractions

FRACTIONS = evaluation_fractions(2.0, [1 / 32, 1 / 16], 8, 0.5)  # 0 .. 2 epochs, 13 evaluations
FINAL_KL = {0.03: 9.0, 0.1: 5.0, 0.3: 2.5, 1.0: 1.0}  # smaller beta travels further
SIZE_KL_FACTOR = {"tiny": 1.0, "small": 0.6}


def rl(d, alpha, beta_f):
    d = np.asarray(d, float)
    return np.where(d > 0, d * (alpha - beta_f * np.log(np.where(d > 0, d, 1.0))), 0.0)


def bon(d, alpha, beta_f):
    d = np.asarray(d, float)
    return d * (alpha - beta_f * d)


def make_results(
    gain=lambda d: rl(d, 0.2, 0.2), objectives=("dpo",), sizes=("tiny",), seeds=(0, 1), baseline=0.5, noise=0.01, trial_sd=0.0, seed=0
) -> pd.DataFrame:
    """One row per evaluation with every column the sweep writes. KL grows along each trial and
    saturates at FINAL_KL[beta] (x the size's factor); win rate = baseline + gain(d) (+ noise, + a per-trial
    offset); length_r2 falls with KL, mean length grows with d, implicit accuracy and loss follow the epoch."""
    rng = np.random.default_rng(seed)
    rows = []
    for objective in objectives:
        for size in sizes:
            for beta, final_kl in FINAL_KL.items():
                for s in seeds:
                    offset = rng.normal(0.0, trial_sd)
                    name = f"{objective}-{size}-{beta:g}-{s}"
                    for step, epoch in enumerate(FRACTIONS):
                        kl = final_kl * SIZE_KL_FACTOR[size] * (1 - math.exp(-3 * epoch)) / (1 - math.exp(-6))
                        d = math.sqrt(kl)
                        win = baseline + (float(gain(d)) + offset if step else 0.0) + rng.normal(0.0, noise)
                        rows.append(
                            {
                                "objective": objective,
                                "beta": beta,
                                "size": size,
                                "seed": s,
                                "trial_name": name,
                                "step": step * 10,
                                "epoch_fraction": epoch,
                                "kl": kl,
                                "kl_se": 0.05,
                                "d": d,
                                "win_rate": win,
                                "win_rate_low": win - 0.06,
                                "win_rate_high": win + 0.06,
                                "judged": 256,
                                "invalid_judgements": 0,
                                "gold_reward": math.nan,
                                "reward_model_score": 3.0 * win - 1.0,
                                "mean_length": 3.5 + 0.8 * d + rng.normal(0, 0.05),
                                "truncation_rate": 0.0,
                                "length_slope": 0.1,
                                "length_r2": (float(np.clip(0.7 * math.exp(-kl / 3) + rng.normal(0, 0.03), 0, 1)) if step else math.nan),
                                "loss": 0.69 * math.exp(-2 * epoch) + rng.normal(0, 0.01),
                                "implicit_accuracy": 0.5 + 0.45 * (1 - math.exp(-5 * epoch)) + rng.normal(0, 0.01),
                                "reward_margin": 0.0,
                                "chosen_log_ratio": 0.0,
                                "rejected_log_ratio": 0.0,
                                "grad_norm": 1.0,
                                "stop_reason": "completed",
                            }
                        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Fits: known curves, held-out preference, baseline


def test_rl_curve_is_recovered_and_preferred_by_leave_one_beta_out():
    results = make_results(gain=lambda d: rl(d, 0.2, 0.2), noise=0.01)
    fits = fit_curves(results, n_bootstrap=100)[("dpo", "tiny")]
    fit = fits["rl"]
    assert fit.alpha == pytest.approx(0.2, abs=0.02) and fit.beta_f == pytest.approx(0.2, abs=0.02)
    assert fit.alpha_ci[0] <= 0.2 <= fit.alpha_ci[1] and fit.beta_f_ci[0] <= 0.2 <= fit.beta_f_ci[1]
    assert fit.bootstrap_unit == "group" and fit.n_groups == 4 * 2  # 4 betas x 2 seeds: whole trials
    assert fit.peak_identified() and fit.d_star == pytest.approx(1.0, abs=0.1)  # exp(0.2/0.2 - 1)
    comparison = held_out_comparisons(results, n_bootstrap=100)[("dpo", "tiny")]
    assert comparison.preferred == "rl" and comparison.distinguishable
    assert comparison.n_folds == 4 and comparison.n_points == 4 * 2 * 12  # trained evaluations only
    assert comparison.rmse["rl"] < 0.5 * comparison.rmse["bon"]
    assert comparison.rmse["rl"] < 0.5 * comparison.rmse["quadratic"]


def test_best_of_n_curve_is_preferred_when_it_is_the_truth():
    results = make_results(gain=lambda d: bon(d, 0.3, 0.1), noise=0.01)
    comparison = held_out_comparisons(results, n_bootstrap=100)[("dpo", "tiny")]
    assert comparison.preferred == "bon" and comparison.distinguishable
    fit = fit_curves(results, n_bootstrap=0)[("dpo", "tiny")]["bon"]
    assert fit.alpha == pytest.approx(0.3, abs=0.02) and fit.beta_f == pytest.approx(0.1, abs=0.01)


def test_gains_are_measured_from_the_step0_win_rate_everywhere():
    # a judge biased towards the policy: the reference wins 0.6 against itself here
    results = make_results(gain=lambda d: rl(d, 0.2, 0.2), baseline=0.6, noise=0.0)
    baselines = reference_baselines(results)
    assert baselines[("dpo", "tiny")].value == pytest.approx(0.6)
    assert baselines[("dpo", "tiny")].source == "step-0 mean" and baselines[("dpo", "tiny")].n == 8
    fit = fit_curves(results, n_bootstrap=0)[("dpo", "tiny")]["rl"]
    assert fit.alpha == pytest.approx(0.2, abs=1e-6) and fit.beta_f == pytest.approx(0.2, abs=1e-6)
    curve = binned_curve(results, "dpo")
    assert curve.step0_win_rate == pytest.approx(0.6)
    assert curve.rise == pytest.approx(max(curve.bin_win_rate) - 0.6)  # the same baseline as the fits
    assert with_gain(results)["gain"][results["step"] == 0].abs().max() < 1e-12
    # no step-0 rows: the fallback 0.5, and it says so
    fallback = reference_baselines(results[results["step"] > 0])[("dpo", "tiny")]
    assert fallback.value == 0.5 and fallback.n == 0 and "fallback" in fallback.source


def test_pooled_rise_and_fall_get_trial_bootstrap_intervals():
    from overopt.analysis.claims import binned_claim

    hump = binned_curve(make_results(noise=0.03, trial_sd=0.02, seeds=(0, 1, 2)), "dpo", n_bootstrap=200)
    assert hump.rise_ci[0] > 0.1 and hump.fall_ci[0] > 0.05  # rl(d, 0.2, 0.2): peak 0.2 at d = 1, -0.06 at d = 3
    assert hump.rise_ci[0] <= hump.rise <= hump.rise_ci[1] and hump.fall_ci[0] <= hump.fall <= hump.fall_ci[1]
    assert "a decline at the largest d" in binned_claim(hump)
    plateau = binned_curve(
        make_results(gain=lambda d: 0.1 * np.minimum(d, 1.0), noise=0.03, trial_sd=0.02, seeds=(0, 1, 2)), "dpo", n_bootstrap=200
    )
    assert plateau.fall_ci[0] <= 0 and "no decline established" in binned_claim(plateau)
    assert json.loads(json.dumps(binned_curve(make_results(), "dpo").to_dict(), allow_nan=False))["rise_ci"] == [None, None]


def test_trial_bootstrap_is_wider_than_point_bootstrap_when_trials_share_offsets():
    from overopt.analysis.fits import fit_scaling_law

    results = with_gain(make_results(noise=0.005, trial_sd=0.05, seeds=(0, 1, 2)))
    d, gain = results["d"].to_numpy(), results["gain"].to_numpy()
    groups = list(zip(results["beta"], results["seed"]))
    by_trial = fit_scaling_law(d, gain, n_bootstrap=200, groups=groups)
    by_point = fit_scaling_law(d, gain, n_bootstrap=200)

    def width(interval):
        return interval[1] - interval[0]

    assert (by_trial.alpha, by_trial.beta_f) == (by_point.alpha, by_point.beta_f)  # same point estimate
    assert width(by_trial.alpha_ci) > 1.5 * width(by_point.alpha_ci)
    assert by_trial.n_groups == 12 and by_point.bootstrap_unit == "point"


# ----------------------------------------------------------------------------------------------
# Claims follow the intervals


def _fit(**kwargs):
    base = dict(
        form="rl",
        alpha=0.2,
        beta_f=0.1,
        d_star=math.exp(1.0),
        peak=0.1 * math.e,
        rmse=0.05,
        r2=0.3,
        n_points=50,
        alpha_ci=(0.1, 0.3),
        beta_f_ci=(0.05, 0.15),
        d_star_ci=(1.5, 2.5),
        peak_ci=(0.2, 0.3),
        n_bootstrap=200,
        peak_fraction=1.0,
        bootstrap_unit="group",
        n_groups=8,
    )
    return ScalingFit(**{**base, **kwargs})


def test_peak_claims_do_not_contradict_the_intervals():
    assert "inside the observed range" in peak_claim(_fit(), d_max=3.0)
    # beta_f's interval includes 0: never "inside the observed range", whatever d* is
    unidentified = peak_claim(_fit(beta_f_ci=(-0.02, 0.2), peak_fraction=0.8), d_max=3.0)
    assert "not identified" in unidentified and "inside" not in unidentified
    # most resamples turn over but not all
    assert "not identified" in peak_claim(_fit(peak_fraction=0.9), d_max=3.0)
    assert "not located" in peak_claim(_fit(d_star_ci=(1.5, 6.0)), d_max=3.0)
    assert "beyond the observed range" in peak_claim(_fit(d_star_ci=(3.5, 6.0)), d_max=3.0)


# ----------------------------------------------------------------------------------------------
# Intra-epoch peaks and the size effect


def _shaped(epoch_peak: float, fall: float, size="tiny", beta=0.1, seeds=(0, 1)):
    """Win rate 0.5 -> 0.7 at epoch_peak, then down by `fall` per epoch; d = epoch."""
    rows = []
    for s in seeds:
        for step, epoch in enumerate(FRACTIONS):
            win = 0.5 + 0.2 * epoch / epoch_peak if epoch <= epoch_peak else 0.7 - fall * (epoch - epoch_peak)
            rows.append(
                {
                    "objective": "dpo",
                    "size": size,
                    "beta": beta,
                    "seed": s,
                    "step": step,
                    "epoch_fraction": epoch,
                    "d": epoch * 2,
                    "kl": (epoch * 2) ** 2,
                    "win_rate": win,
                    "win_rate_low": win - 0.05,
                    "win_rate_high": win + 0.05,
                    "stop_reason": "completed",
                }
            )
    return rows


def test_peak_positions_find_a_known_peak_and_read_the_decline():
    results = pd.DataFrame(_shaped(0.25, 0.3, beta=0.1) + _shaped(2.0, 0.0, beta=1.0))
    positions = peak_positions(results).set_index("beta")
    early = positions.loc[0.1]
    assert early["peak_epoch"] == 0.25 and early["peak_d"] == pytest.approx(0.5)
    assert early["peak_win_rate"] == pytest.approx(0.7) and early["seeds"] == 2
    assert early["clear_decline"] and not early["peak_at_end"]  # 0.7 - 0.3*1.75 = 0.175 at epoch 2
    late = positions.loc[1.0]
    assert late["peak_epoch"] == 2.0 and late["peak_at_end"] and not late["clear_decline"]
    # a small dip within the intervals is not a clear decline
    dip = peak_positions(pd.DataFrame(_shaped(1.0, 0.04)))
    assert not dip["clear_decline"].iloc[0] and dip["peak_epoch"].iloc[0] == 1.0


def test_size_effect_reports_kl_reached_and_peak_position_per_size():
    results = make_results(gain=lambda d: rl(d, 0.2, 0.2), sizes=("tiny", "small"), noise=0.0)
    table = size_effect(results).set_index("size")
    assert list(table.index) == ["tiny", "small"]  # in the order the sizes appear
    assert table.loc["tiny", "max_kl"] == pytest.approx(9.0) and table.loc["small", "max_kl"] == pytest.approx(5.4)
    assert table.loc["tiny", "smallest_beta"] == 0.03
    # the curve peaks at d* = 1 whatever the size; tiny gets there earlier in the epoch
    assert table.loc["tiny", "smallest_beta_peak_epoch"] < table.loc["small", "smallest_beta_peak_epoch"]
    assert table.loc["tiny", "median_peak_d"] == pytest.approx(1.0, abs=0.35)


# ----------------------------------------------------------------------------------------------
# Correlations


def test_length_r2_falling_with_kl_gives_a_negative_correlation_and_length_a_positive_one():
    table = length_exploitation(make_results(seeds=(0, 1, 2)), n_bootstrap=200).set_index("size")
    r2_vs_kl, length_vs_d = table.loc["tiny", "r2_vs_kl"], table.loc["tiny", "length_vs_d"]
    assert r2_vs_kl.r < -0.8 and r2_vs_kl.high < 0 and r2_vs_kl.excludes_zero()
    assert length_vs_d.r > 0.8 and length_vs_d.low > 0
    assert r2_vs_kl.interval.startswith("trial bootstrap") and r2_vs_kl.n_groups == 12
    assert table.loc["tiny", "evaluations"] == 12 * 12  # step 0 has no length_r2


def test_training_metrics_that_track_win_rate_correlate_and_unrelated_ones_do_not():
    rng = np.random.default_rng(3)
    results = make_results(seeds=(0, 1, 2))
    # implicit accuracy made to track win rate; loss made independent of everything
    results["implicit_accuracy"] = results["win_rate"] * 0.8 + rng.normal(0, 0.01, len(results))
    results["loss"] = rng.normal(0.5, 0.1, len(results))
    table = training_metrics_vs_win(results, n_bootstrap=200).set_index("metric")
    accuracy, loss = table.loc["implicit_accuracy"], table.loc["loss"]
    assert accuracy["spearman"].r > 0.8 and accuracy["spearman"].low > 0 and accuracy["pearson"].low > 0
    assert loss["spearman"].low < 0 < loss["spearman"].high and not loss["spearman"].excludes_zero()


def test_correlation_intervals_fall_back_to_fisher_z_and_handle_degenerate_input():
    x = np.arange(1.0, 11.0)
    y = [2, 1, 4, 3, 6, 5, 8, 7, 10, 9]  # every rank off by one: rho = 1 - 6 * 10 / (10 * 99) = 0.939394
    few = correlation(x, y, groups=[0] * 5 + [1] * 5)  # 2 trials: too few to resample
    assert few.interval.startswith("fisher-z") and few.r == pytest.approx(1 - 60 / 990)
    # Spearman's Fisher-z interval by hand: se = sqrt(1.06 / (n - 3))
    z, se = math.atanh(1 - 60 / 990), math.sqrt(1.06 / 7)
    assert (few.low, few.high) == (
        pytest.approx(math.tanh(z - 1.959964 * se), rel=1e-5),
        pytest.approx(math.tanh(z + 1.959964 * se), rel=1e-5),
    )
    pearson = correlation(x, y, method="pearson")  # no groups at all: Fisher-z with se 1/sqrt(n - 3)
    assert pearson.r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson.low == pytest.approx(math.tanh(math.atanh(pearson.r) - 1.959964 / math.sqrt(7)), rel=1e-5)
    assert math.isnan(correlation([1, 1, 1, 1], [1, 2, 3, 4]).r)
    assert correlation([1, 2, math.nan, 4, 5], [2, 4, 6, math.nan, 10]).n == 3
    with pytest.raises(ValueError):
        correlation([1, 2, 3], [1, 2, 3], method="kendall")


# ----------------------------------------------------------------------------------------------
# The whole report


def test_analyze_writes_every_analysis_into_fits_json_and_the_report(tmp_path):
    from overopt.analysis.toy_mdp import write_toy_mdp

    results = make_results(objectives=("dpo", "ipo"), sizes=("tiny", "small"), noise=0.03, trial_sd=0.01)
    results.to_parquet(tmp_path / "results.parquet")
    write_toy_mdp(tmp_path, steps=20, betas=(0.1,), objectives=("dpo",))  # a quick toy run, found by analyze
    report = analyze(tmp_path, n_bootstrap=30, log=lambda *a: None)
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert set(fits["fits"]) == {"dpo/tiny", "dpo/small", "ipo/tiny", "ipo/small"}
    assert fits["baseline"]["values"]["dpo/tiny"]["source"] == "step-0 mean"
    assert "whole trials" in fits["bootstrap"]
    assert fits["held_out"]["dpo/tiny"]["preferred"] == "rl"
    assert len(fits["peak_positions"]) == 2 * 2 * 4 and len(fits["size_effect"]) == 4
    assert fits["length_exploitation"][0]["r2_vs_kl"]["r"] < 0
    assert fits["gold_reward_fits"] == {} and fits["toy_mdp"] == "toy_mdp.json"  # a reward model's scores are no gold reward
    assert set(fits["matched_d"]) == {"win_rate"} and fits["proxy_and_gold"] == []  # no proxy in these rows
    text = report.read_text()
    assert "## Gold reward" not in text
    assert "## Proxy and gold\n\nNo proxy in this experiment: the rows carry no proxy win rate." in text
    assert not (tmp_path / "gold_and_proxy_vs_d.png").exists()
    for heading in (
        "## dpo",
        "## ipo",
        "RL d(a - b ln d)",
        "leave-one-beta-out",
        "## Intra-epoch",
        "## Length exploitation",
        "## Do implicit reward accuracy",
        "## Size effect",
        "## Objectives at matched distance",
        "## Length growth",
        "## Model size against the paper",
        "## Toy MDP",
        "configs/embedded_unbiased.yaml",  # the toy MDP's mechanism, linked to the embedded control
        "Preferred form",
    ):
        assert heading in text, heading
    for name in (
        "win_rate_vs_d",
        "win_rate_vs_epoch",
        "length_vs_d",
        "peak_positions",
        "length_r2_vs_kl",
        "training_metrics_vs_win",
        "gold_and_proxy_pooled_vs_d",
        "toy_mdp",
    ):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
        assert f"({name}.png)" in text


def _cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped of their padding ([] for any other line)."""
    return [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []


def test_the_report_sets_the_proxy_beside_gold_compares_objectives_at_matched_d_and_reads_length_and_size(tmp_path):
    results = make_results(objectives=("dpo", "rdpo"), sizes=("tiny", "small"), noise=0.01)
    # the proxy climbs with d in every trial; in one it turns down beyond d = 2 (by more than its interval)
    overshooting = (results["trial_name"] == "dpo-tiny-0.03-0").to_numpy()
    results["proxy_win_rate"] = 0.5 + 0.12 * results["d"] - np.where(overshooting, 0.2 * np.maximum(results["d"] - 2.0, 0.0), 0.0)
    results["proxy_win_rate_low"], results["proxy_win_rate_high"] = results["proxy_win_rate"] - 0.03, results["proxy_win_rate"] + 0.03
    results["mean_length"] = 3.5 + np.where(results["objective"] == "rdpo", 0.4, 0.8) * results["d"]  # R-DPO grows half as much
    results.to_parquet(tmp_path / "results.parquet")
    text = analyze(tmp_path, n_bootstrap=10, log=lambda *a: None, toy_mdp=False).read_text()
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert set(fits["matched_d"]) == {"win_rate", "proxy_win_rate"} and len(fits["proxy_and_gold"]) == 2 * 2 * 4 * 2
    overshot = [r for r in fits["proxy_and_gold"] if r["overshot_own_labels"]]
    assert [(r["objective"], r["size"], r["beta"], r["seed"]) for r in overshot] == [("dpo", "tiny", 0.03, 0)]
    assert overshot[0]["proxy_kept_rising"] is True  # still above its value at gold's peak (d = 1), below its own best
    section = text[text.index("## Proxy and gold") : text.index("## dpo")]
    cells = [row for row in map(_cells, section.splitlines()) if row[:3] == ["dpo", "tiny", "0.03"]]
    # gold fell; then proxy kept rising and over-shot own labels: seed 0 over-shot, seed 1 did not
    assert [(row[7], *row[-2:]) for row in cells] == [("yes", "yes", "yes"), ("yes", "yes", "no")]
    assert "1 of 32 trials end more than the proxy interval's half-width below the proxy's own best" in text
    # the same curve along d for both objectives: the same peak at matched d, in the table of each metric
    for metric in ("Gold", "Proxy"):
        header = _cells(text.split(f"{metric} win rate:\n\n", 1)[1].split("\n", 1)[0])
        assert header[:5] == ["size", "objective", "trials", "common d high", "pooled peak"]
    assert "- tiny: over d 0.00 to 3.00 (reached by every compared objective), the gold win rate of " in text
    assert "- tiny, beta 0.03: rdpo +1.20 tokens (step 0 to KL 9.00), dpo +2.40 tokens (to KL 9.00)." in text
    assert "\n- dpo: small against tiny: median peak win rate " in text and "; the paper: higher), median fall" in text
    for name in ("gold_and_proxy_vs_d", "gold_and_proxy_pooled_vs_d"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000 and f"({name}.png)" in text


def test_analyze_reads_stored_rows_and_writes_back_to_a_remote_location(tmp_path, monkeypatch):
    """An unfinished sweep (rows/ only, no results.parquet) at a URI that is treated as remote storage."""
    from overopt.storage import Storage

    results = make_results(noise=0.02)
    for row in results.to_dict(orient="records"):
        folder = tmp_path / "rows" / row["trial_name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"step_{row['step']:06d}.json").write_text(json.dumps(row))
    original = Storage.__init__

    def as_remote(self, location):
        original(self, location)
        self.local = False  # write the way an object store is written

    # Two failed trials: one with rows (an error after some evaluations), one that failed before its first.
    (tmp_path / "errors").mkdir()
    errored = results["trial_name"].iloc[0]
    for name, message in (
        (errored, "NonFiniteTraining: non-finite loss at step 7"),
        ("never-evaluated", "JudgeUnavailable: connection refused"),
    ):
        (tmp_path / "errors" / f"{name}.json").write_text(json.dumps({"trial_name": name, "message": message}))
    monkeypatch.setattr(Storage, "__init__", as_remote)
    report = analyze(f"file://{tmp_path}", n_bootstrap=10, log=lambda *a: None, toy_mdp=False)
    assert str(report).endswith("report.md")
    text = (tmp_path / "report.md").read_text()
    assert "## Failed trials" in text and "`never-evaluated` (no evaluation reported): JudgeUnavailable: connection refused" in text
    assert f"`{errored}` (has rows): NonFiniteTraining: non-finite loss at step 7" in text
    assert text.startswith(f"# Over-optimization report: {tmp_path.name}") and "## dpo" in text
    assert json.loads((tmp_path / "fits.json").read_text())["fits"]["dpo/tiny"]["rl"]["n_points"] == len(results)
    assert (tmp_path / "win_rate_vs_d.png").exists() and not (tmp_path / "toy_mdp.png").exists()
    with pytest.raises(FileNotFoundError):
        analyze(tmp_path / "missing", log=lambda *a: None)
