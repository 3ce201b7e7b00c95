"""Evaluation schedule and the pooled over-optimization summary (the stopper: test_stopper.py)."""

import numpy as np
import pandas as pd
import pytest

from overopt.analysis.summary import binned_curve, fit_curves, trial_peaks
from overopt.schedule import evaluation_fractions, evaluation_steps


def test_fractions_are_geometric_early_then_even_then_half_epochs():
    fractions = evaluation_fractions(2.0, [1 / 64, 1 / 32, 1 / 16], 8, 0.5)
    assert fractions == [0.0, 1 / 64, 1 / 32, 1 / 16] + [k / 8 for k in range(1, 9)] + [1.5, 2.0]


def test_fractions_beyond_a_short_run_are_dropped():
    assert evaluation_fractions(0.5, [0.25, 1.0], 2, 0.5) == [0.0, 0.25, 0.5]


def test_steps_never_collapse_a_positive_fraction_onto_the_reference():
    steps = evaluation_steps([0.0, 1 / 64, 1 / 32, 0.5, 1.0], steps_per_epoch=20)
    assert steps == {0: 0.0, 1: 1 / 64, 10: 0.5, 20: 1.0}  # 1/64 and 1/32 both round to step 1


def _hump_results(seed=0):
    """Synthetic results with a known hump: win = 0.5 + d (1 - 0.5 ln d) noise-free-ish, 2 betas."""
    rng = np.random.default_rng(seed)
    rows = []
    for beta, d_max in ((0.1, 6.0), (1.0, 2.0)):
        for step, d in enumerate(np.linspace(0, d_max, 13)):
            gain = d * (0.3 - 0.2 * np.log(d)) if d > 0 else 0.0
            rows.append(
                {
                    "objective": "dpo",
                    "size": "tiny",
                    "beta": beta,
                    "seed": 0,
                    "step": step,
                    "epoch_fraction": step / 12,
                    "d": d,
                    "kl": d * d,
                    "win_rate": 0.5 + gain + rng.normal(0, 0.005),
                    "stop_reason": "completed",
                }
            )
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


def test_stop_reasons_are_read_from_the_records_never_inferred_from_the_rows(tmp_path):
    import json

    from overopt.analysis.results import collect_results
    from overopt.storage import Storage

    def rows(name, steps, planned=93):
        for s in steps:
            row = {
                "trial_name": name,
                "objective": "dpo",
                "beta": 0.1,
                "size": "tiny",
                "seed": 0,
                "step": s,
                "epoch_fraction": s / 93,
                "win_rate": 0.5,
                "planned_steps": planned,
            }
            (tmp_path / "rows" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "rows" / name / f"step_{s:06d}.json").write_text(json.dumps(row))

    rows("stopped", [0, 8, 16, 31])  # its driver stopped it on the row of step 31, training had reached 35
    rows("stopped_last", [0, 8, 16, 31, 46, 62, 93])  # stopped on its very last row: a stop all the same
    rows("finished", [0, 8, 16, 31, 46, 62, 93])
    rows("cut", [0, 8])  # neither a stop nor an error, and short of its planned steps
    rows("failed", [0, 8])
    (tmp_path / "stops").mkdir()
    (tmp_path / "stops" / "stopped.json").write_text(
        json.dumps({"trial_name": "stopped", "step": 31, "reason": "degraded: x", "trained_steps": 35})
    )
    (tmp_path / "stops" / "stopped_last.json").write_text(
        json.dumps({"trial_name": "stopped_last", "step": 93, "reason": "degraded: y", "trained_steps": 93})
    )
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "failed.json").write_text(json.dumps({"message": "boom"}))
    results = collect_results(Storage(str(tmp_path)))
    by_trial = results.groupby("trial_name").first()
    assert by_trial["stop_reason"].to_dict() == {
        "stopped": "degraded: x",
        "stopped_last": "degraded: y",
        "finished": "completed",
        "cut": "unfinished",
        "failed": "error: boom",
    }
    assert by_trial.loc["stopped", "stopped_at_step"] == 31 and by_trial.loc["stopped", "trained_steps"] == 35  # where training ended
    assert pd.isna(by_trial.loc["finished", "stopped_at_step"])
    assert len(results) == 22
