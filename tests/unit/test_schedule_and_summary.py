"""Evaluation schedule, the stopper's decisions, and the pooled over-optimization summary."""

import numpy as np
import pandas as pd
import pytest

from overopt.analysis.summary import binned_curve, fit_curves, trial_peaks
from overopt.evaluate.schedule import evaluation_fractions, evaluation_steps


def test_fractions_are_geometric_early_then_even_then_half_epochs():
    fractions = evaluation_fractions(2.0, [1 / 64, 1 / 32, 1 / 16], 8, 0.5)
    assert fractions == [0.0, 1 / 64, 1 / 32, 1 / 16] + [k / 8 for k in range(1, 9)] + [1.5, 2.0]


def test_fractions_beyond_a_short_run_are_dropped():
    assert evaluation_fractions(0.5, [0.25, 1.0], 2, 0.5) == [0.0, 0.25, 0.5]


def test_steps_never_collapse_a_positive_fraction_onto_the_reference():
    steps = evaluation_steps([0.0, 1 / 64, 1 / 32, 0.5, 1.0], steps_per_epoch=20)
    assert steps == {0: 0.0, 1: 1 / 64, 10: 0.5, 20: 1.0}  # 1/64 and 1/32 both round to step 1


def test_stopper_stops_a_declining_trial_and_spares_an_improving_one():
    from overopt.sweep.stopper import DegradationStopper

    stopper = DegradationStopper(margin=0.05, patience=3)
    declining = [0.5, 0.6, 0.7, 0.66, 0.6, 0.55, 0.5]
    decisions = [stopper("a", {"win_rate": w, "trial_name": "a"}) for w in declining]
    # 0.66 is within the margin of the best (0.70); 0.60, 0.55, 0.50 are not -> stop at the third
    assert decisions == [False] * 6 + [True]
    assert "0.500" in stopper.reasons["a"] and "best 0.700" in stopper.reasons["a"]
    improving = [0.5, 0.55, 0.52, 0.6, 0.58, 0.7, 0.69, 0.75]
    assert not any(stopper("b", {"win_rate": w, "trial_name": "b"}) for w in improving)


def test_stopper_streak_resets_on_recovery_and_kl_budget_stops():
    from overopt.sweep.stopper import DegradationStopper

    stopper = DegradationStopper(margin=0.05, patience=2, kl_budget=5.0)
    wins = [0.7, 0.6, 0.7, 0.6]  # never two bad evaluations in a row
    assert not any(stopper("a", {"win_rate": w, "kl": 1.0, "trial_name": "a"}) for w in wins)
    assert stopper("k", {"win_rate": 0.7, "kl": 6.0, "trial_name": "k"})
    assert stopper.reasons["k"].startswith("kl budget")
    assert not stopper("x", {"loss": 1.0})  # rows without a win rate are no evidence
    with pytest.raises(ValueError):
        DegradationStopper(margin=-1, patience=3)


def _hump_results(seed=0):
    """Synthetic results with a known hump: win = 0.5 + d (1 - 0.5 ln d) noise-free-ish, 2 betas."""
    rng = np.random.default_rng(seed)
    rows = []
    for beta, d_max in ((0.1, 6.0), (1.0, 2.0)):
        for step, d in enumerate(np.linspace(0, d_max, 13)):
            gain = d * (0.3 - 0.2 * np.log(d)) if d > 0 else 0.0
            rows.append({"objective": "dpo", "size": "tiny", "beta": beta, "seed": 0, "step": step,
                         "epoch_fraction": step / 12, "d": d, "kl": d * d, "win_rate": 0.5 + gain + rng.normal(0, 0.005),
                         "stop_reason": "completed"})
    return pd.DataFrame(rows)


def test_binned_curve_reads_the_rise_and_fall():
    curve = binned_curve(_hump_results(), "dpo")
    assert len(curve.bin_d) == 6 and curve.bin_d == sorted(curve.bin_d)
    assert curve.step0_win_rate == pytest.approx(0.5, abs=0.01)
    assert curve.rise > 0.1 and curve.fall > 0.1
    assert curve.max_kl_smallest_beta == pytest.approx(36.0) and curve.max_kl_largest_beta == pytest.approx(4.0)
    with pytest.raises(ValueError, match="fewer than 6 bins"):
        binned_curve(_hump_results().head(4), "dpo")


def test_fits_and_peaks_per_trial():
    results = _hump_results()
    fits = fit_curves(results, n_bootstrap=0)
    rl = fits[("dpo", "tiny")]["rl"]
    assert rl.alpha == pytest.approx(0.3, abs=0.02) and rl.beta_f == pytest.approx(0.2, abs=0.02)
    peaks = trial_peaks(results).set_index("beta")
    assert peaks.loc[0.1, "d_at_peak"] == pytest.approx(np.exp(0.3 / 0.2 - 1), abs=0.5)
    assert peaks.loc[1.0, "max_kl"] == pytest.approx(4.0)


def test_results_carry_stop_reasons_including_the_row_in_flight(tmp_path):
    import json

    from overopt.sweep.run import collect_results

    (tmp_path / "rows").mkdir()

    def rows(name, steps):
        lines = [json.dumps({"trial_name": name, "objective": "dpo", "beta": 0.1, "size": "tiny", "seed": 0,
                             "step": s, "win_rate": 0.5}) for s in steps]
        (tmp_path / "rows" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")

    rows("stopped", [0, 8, 16, 31, 46])  # stopped at 31; the evaluation at 46 was already running
    rows("rerun", [0, 8, 16, 31, 46, 62, 93])  # stopped at 16 once, then restored and run to the end
    rows("finished", [0, 8])
    stops = [{"trial_name": "stopped", "step": 31, "reason": "degraded: x"},
             {"trial_name": "rerun", "step": 16, "reason": "degraded: y"}]
    (tmp_path / "stops.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stops))
    results = collect_results(tmp_path, errors={"finished": "boom"})
    reasons = results.groupby("trial_name")["stop_reason"].first().to_dict()
    assert reasons == {"stopped": "degraded: x", "rerun": "completed", "finished": "error: boom"}
    assert len(results) == 14
