"""Tests for overopt.analysis.fits: Gao et al. over-optimization forms fitted in d = sqrt(KL)."""

import json
import math

import numpy as np
import pytest

from overopt.analysis.fits import ScalingFit, compare_fits, fit_scaling_law

TRUE_ALPHA = 1.0
TRUE_BETA_F_RL = 0.5  # d* = exp(1/0.5 - 1) = e, peak = 0.5 e
TRUE_BETA_F_BON = 0.25  # d* = 1 / 0.5 = 2, peak = 1 / 1 = 1
NOISE_SD = 0.02
COEFFICIENT_TOLERANCE = 0.05  # ~10x the standard error of the coefficients at 200 points, sd 0.02


def rl_curve(d, alpha, beta_f):
    return d * (alpha - beta_f * np.log(d))


def bon_curve(d, alpha, beta_f):
    return d * (alpha - beta_f * d)


def synthetic(curve, beta_f, seed=1, n=200):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.05, 4.0, size=n)
    gain = curve(d, TRUE_ALPHA, beta_f) + rng.normal(0.0, NOISE_SD, size=n)
    return d, gain


@pytest.fixture(scope="module")
def rl_data():
    return synthetic(rl_curve, TRUE_BETA_F_RL)


@pytest.fixture(scope="module")
def rl_fits(rl_data):
    return compare_fits(*rl_data, n_bootstrap=200, seed=0)


def assert_inside(value, interval):
    low, high = interval
    assert low <= value <= high, f"{value} not in [{low}, {high}]"


# ---------------------------------------------------------------------------------------------
# Recovery of known coefficients


def test_rl_form_recovers_coefficients_peak_and_intervals(rl_fits):
    fit = rl_fits["rl"]
    assert fit.form == "rl" and fit.n_points == 200
    assert fit.alpha == pytest.approx(TRUE_ALPHA, abs=COEFFICIENT_TOLERANCE)
    assert fit.beta_f == pytest.approx(TRUE_BETA_F_RL, abs=COEFFICIENT_TOLERANCE)
    # d_star and peak are the closed forms of the fitted coefficients ...
    assert fit.d_star == pytest.approx(math.exp(fit.alpha / fit.beta_f - 1))
    assert fit.peak == pytest.approx(fit.beta_f * fit.d_star)
    assert fit.peak == pytest.approx(float(fit.predict(fit.d_star)))
    # ... and close to the true ones (d* = e, peak = e/2).
    assert fit.d_star == pytest.approx(math.e, abs=0.15)
    assert fit.peak == pytest.approx(math.e / 2, abs=0.03)
    assert fit.rmse == pytest.approx(NOISE_SD, rel=0.2)
    assert fit.r2 > 0.98
    # The true values lie inside the bootstrap 95% intervals, which are proper intervals.
    assert fit.n_bootstrap == 200
    assert_inside(TRUE_ALPHA, fit.alpha_ci)
    assert_inside(TRUE_BETA_F_RL, fit.beta_f_ci)
    assert_inside(math.e, fit.d_star_ci)
    assert_inside(math.e / 2, fit.peak_ci)
    for interval in (fit.alpha_ci, fit.beta_f_ci, fit.d_star_ci, fit.peak_ci):
        assert interval[0] < interval[1]


def test_bon_form_recovers_coefficients_peak_and_intervals():
    d, gain = synthetic(bon_curve, TRUE_BETA_F_BON, seed=2)
    fit = fit_scaling_law(d, gain, form="bon", n_bootstrap=200, seed=0)
    assert fit.alpha == pytest.approx(TRUE_ALPHA, abs=COEFFICIENT_TOLERANCE)
    assert fit.beta_f == pytest.approx(TRUE_BETA_F_BON, abs=COEFFICIENT_TOLERANCE)
    assert fit.d_star == pytest.approx(fit.alpha / (2 * fit.beta_f))
    assert fit.peak == pytest.approx(fit.alpha**2 / (4 * fit.beta_f))
    assert fit.d_star == pytest.approx(2.0, abs=0.1)
    assert fit.peak == pytest.approx(1.0, abs=0.03)
    assert_inside(TRUE_ALPHA, fit.alpha_ci)
    assert_inside(TRUE_BETA_F_BON, fit.beta_f_ci)
    assert_inside(2.0, fit.d_star_ci)
    assert_inside(1.0, fit.peak_ci)


def test_rl_form_beats_quadratic_baseline_and_bon_is_distinct(rl_fits):
    rl, bon, quadratic = rl_fits["rl"], rl_fits["bon"], rl_fits["quadratic"]
    assert set(rl_fits) == {"rl", "bon", "quadratic"}
    assert quadratic.form == "quadratic" and bon.form == "bon"
    # The true form fits at the noise level; the misspecified quadratic-in-KL baseline does not.
    assert rl.rmse < 0.5 * quadratic.rmse
    assert rl.r2 > quadratic.r2
    # BoN is a different curve, not the RL fit relabelled: other coefficients, worse fit.
    assert bon.rmse > rl.rmse
    assert abs(bon.beta_f - rl.beta_f) > 0.1
    assert not np.allclose(bon.predict(rl_fits_grid()), rl.predict(rl_fits_grid()), atol=0.01)


def rl_fits_grid():
    return np.linspace(0.0, 4.0, 41)


# ---------------------------------------------------------------------------------------------
# Hand-computed exact examples


def test_rl_noise_free_fit_is_exact():
    # alpha = 1, beta_f = 0.5: R(0) = 0, R(1) = 1, R(e) = e/2, R(e^2) = e^2 (1 - 1) = 0.
    d = [0.0, 1.0, math.e, math.e**2]
    gain = [0.0, 1.0, math.e / 2, 0.0]
    fit = fit_scaling_law(d, gain, form="rl", n_bootstrap=0)
    assert fit.alpha == pytest.approx(1.0)
    assert fit.beta_f == pytest.approx(0.5)
    assert fit.d_star == pytest.approx(math.e)
    assert fit.peak == pytest.approx(math.e / 2)
    assert fit.rmse == pytest.approx(0.0, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.n_points == 4


def test_bon_noise_free_fit_is_exact():
    # alpha = 2, beta_f = 1: R(1) = 1, R(2) = 0, d* = 1, peak = 4 / 4 = 1.
    fit = fit_scaling_law([1.0, 2.0], [1.0, 0.0], form="bon", n_bootstrap=0)
    assert (fit.alpha, fit.beta_f) == (pytest.approx(2.0), pytest.approx(1.0))
    assert (fit.d_star, fit.peak) == (pytest.approx(1.0), pytest.approx(1.0))
    assert fit.rmse == pytest.approx(0.0, abs=1e-12)


def test_quadratic_noise_free_fit_is_exact_and_stores_c1_c2():
    # c1 = 1, c2 = -0.5 in KL: KL = 1 -> 0.5, KL = 2 -> 0; peak at KL* = 1 (d* = 1), R = 0.5.
    fit = fit_scaling_law([1.0, math.sqrt(2.0)], [0.5, 0.0], form="quadratic", n_bootstrap=0)
    assert fit.alpha == pytest.approx(1.0)  # c1
    assert fit.beta_f == pytest.approx(-0.5)  # c2
    assert fit.d_star == pytest.approx(1.0)
    assert fit.peak == pytest.approx(0.5)
    assert fit.rmse == pytest.approx(0.0, abs=1e-12)


def test_no_peak_gives_nan_and_points_at_zero_count_in_rmse():
    # A gain that only rises (KL + 0.1 KL^2, c2 > 0) has no peak; a non-zero gain at d = 0 cannot
    # be fitted (every form passes through the origin), so it shows up as residual.
    d = [0.0, 1.0, 2.0, 3.0]
    gain = [0.4, 1.1, 5.6, 17.1]
    fit = fit_scaling_law(d, gain, form="quadratic", n_bootstrap=20)
    assert math.isnan(fit.d_star) and math.isnan(fit.peak)
    assert fit.rmse >= 0.4 / 2  # residual 0.4 at d = 0 alone gives sqrt(0.16 / 4) = 0.2
    assert float(fit.predict(0.0)) == 0.0


# ---------------------------------------------------------------------------------------------
# predict


@pytest.mark.parametrize("form", ["rl", "bon", "quadratic"])
def test_predict_is_zero_at_origin(form):
    fit = ScalingFit(form=form, alpha=1.3, beta_f=0.4, d_star=math.nan, peak=math.nan, rmse=0.0, r2=1.0, n_points=2)
    assert fit.predict(0.0) == 0.0
    assert np.all(np.isfinite(fit.predict([0.0, 0.5, 2.0])))


def test_predict_matches_formulas():
    d = np.array([0.0, 0.3, 1.0, 2.5, 4.0])
    kwargs = dict(alpha=1.3, beta_f=0.4, d_star=math.nan, peak=math.nan, rmse=0.0, r2=1.0, n_points=2)
    rl = ScalingFit(form="rl", **kwargs).predict(d)
    bon = ScalingFit(form="bon", **kwargs).predict(d)
    quadratic = ScalingFit(form="quadratic", **kwargs).predict(d)
    assert rl.shape == d.shape
    np.testing.assert_allclose(rl[1:], rl_curve(d[1:], 1.3, 0.4))
    assert rl[0] == 0.0
    np.testing.assert_allclose(bon, bon_curve(d, 1.3, 0.4))
    np.testing.assert_allclose(quadratic, 1.3 * d**2 + 0.4 * d**4)
    with pytest.raises(ValueError, match="non-negative"):
        ScalingFit(form="rl", **kwargs).predict([-1.0])


# ---------------------------------------------------------------------------------------------
# Errors


def test_one_point_is_an_error_naming_the_count():
    with pytest.raises(ValueError, match=r"got 1 point"):
        fit_scaling_law([1.0], [0.5])


def test_all_zero_d_is_an_error():
    with pytest.raises(ValueError, match="all d are 0"):
        fit_scaling_law([0.0, 0.0, 0.0], [0.0, 0.1, -0.1])


def test_unidentifiable_points_are_an_error():
    # Two copies of one d cannot pin down two coefficients.
    with pytest.raises(ValueError, match="cannot be identified"):
        fit_scaling_law([0.0, 2.0, 2.0], [0.0, 1.0, 1.1], form="bon")


def test_unknown_form_lists_the_valid_choices():
    with pytest.raises(ValueError, match="unknown form") as error:
        fit_scaling_law([1.0, 2.0], [0.1, 0.2], form="power")
    for form in ("'rl'", "'bon'", "'quadratic'"):
        assert form in str(error.value)


def test_negative_d_is_an_error():
    with pytest.raises(ValueError, match="non-negative"):
        fit_scaling_law([-0.5, 1.0, 2.0], [0.0, 0.1, 0.2])


def test_mismatched_lengths_and_non_finite_values_are_errors():
    with pytest.raises(ValueError, match="same length"):
        fit_scaling_law([1.0, 2.0, 3.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="d contains non-finite"):
        fit_scaling_law([1.0, math.nan, 3.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="gain contains non-finite"):
        fit_scaling_law([1.0, 2.0, 3.0], [0.1, math.inf, 0.3])


# ---------------------------------------------------------------------------------------------
# Bootstrap and serialisation


def test_no_bootstrap_gives_nan_intervals():
    fit = fit_scaling_law([0.5, 1.0, 2.0], [0.4, 0.9, 1.1], n_bootstrap=0)
    assert fit.n_bootstrap == 0
    for interval in (fit.alpha_ci, fit.beta_f_ci, fit.d_star_ci, fit.peak_ci):
        assert all(math.isnan(bound) for bound in interval)


def test_bootstrap_is_reproducible_and_skips_degenerate_resamples(rl_data):
    d, gain = rl_data
    first = fit_scaling_law(d[:30], gain[:30], n_bootstrap=50, seed=7)
    again = fit_scaling_law(d[:30], gain[:30], n_bootstrap=50, seed=7)
    other = fit_scaling_law(d[:30], gain[:30], n_bootstrap=50, seed=8)
    assert first == again
    assert first.alpha_ci != other.alpha_ci
    # With 3 points, two at d = 0, many resamples cannot identify the curve and are skipped.
    sparse = fit_scaling_law([0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 1.0, 1.5], n_bootstrap=100, seed=0)
    assert 0 < sparse.n_bootstrap < 100


def test_to_dict_is_json_serialisable(rl_fits):
    no_peak = fit_scaling_law([1.0, 2.0, 3.0], [1.1, 5.6, 17.1], form="quadratic", n_bootstrap=0)
    for fit in (*rl_fits.values(), no_peak):
        as_dict = fit.to_dict()
        round_tripped = json.loads(json.dumps(as_dict, allow_nan=False))
        assert round_tripped["form"] == fit.form
        assert round_tripped["alpha"] == pytest.approx(fit.alpha)
        assert len(round_tripped["d_star_ci"]) == 2
    assert no_peak.to_dict()["d_star"] is None
    assert no_peak.to_dict()["alpha_ci"] == [None, None]


# ---------------------------------------------------------------------------------------------
# Grouped (trial) bootstrap, baseline re-centring, held-out comparison


def test_group_bootstrap_draws_whole_groups_and_accepts_tuple_labels(rl_data):
    d, gain = rl_data
    labels = [("dpo", 0.1, "tiny", i % 10) for i in range(d.size)]  # 10 trials of 20 points
    fit = fit_scaling_law(d, gain, n_bootstrap=50, seed=3, groups=labels)
    assert fit.bootstrap_unit == "group" and fit.n_groups == 10 and fit.n_bootstrap == 50
    assert fit == fit_scaling_law(d, gain, n_bootstrap=50, seed=3, groups=labels)  # reproducible
    assert fit_scaling_law(d, gain, n_bootstrap=0).bootstrap_unit == "point"
    with pytest.raises(ValueError, match="one label per point"):
        fit_scaling_law(d, gain, groups=labels[:-1])


def test_recentring_moves_each_resample_to_its_own_reference_points():
    # Four groups (trials), each the curve R(1) = 1, R(2) = 0 (best-of-n: alpha 2, beta_f 1) plus its own
    # offset, which its reference point (d = 0) measures: +0.1, -0.1, +0.2, -0.2, averaging 0.
    offsets = [0.1, -0.1, 0.2, -0.2]
    d = np.tile([0.0, 1.0, 2.0], 4)
    gain = np.concatenate([np.array([0.0, 1.0, 0.0]) + o for o in offsets])
    reference = d == 0
    groups = np.repeat([0, 1, 2, 3], 3)
    plain = fit_scaling_law(d, gain, form="bon", n_bootstrap=200, seed=0, groups=groups)
    recentred = fit_scaling_law(d, gain, form="bon", n_bootstrap=200, seed=0, groups=groups, recentre_on=reference)
    assert (plain.alpha, plain.beta_f) == (recentred.alpha, recentred.beta_f)  # the point estimate is unchanged
    # Without re-centring a resample's mean offset goes into the coefficients; re-centred on its own
    # reference points every resample is the same curve exactly.
    assert recentred.alpha_ci == pytest.approx((2.0, 2.0)) and recentred.beta_f_ci == pytest.approx((1.0, 1.0))
    assert plain.alpha_ci[1] - plain.alpha_ci[0] > 0.05
    # 1-3 groups are too few to resample: no intervals at all
    too_few = fit_scaling_law(d[:6], gain[:6], form="bon", n_bootstrap=200, groups=groups[:6])
    assert too_few.n_bootstrap == 0 and too_few.n_groups == 2 and math.isnan(too_few.alpha_ci[0])
    with pytest.raises(ValueError, match="one entry per point"):
        fit_scaling_law(d, gain, recentre_on=reference[:-1])


def test_held_out_predictions_of_the_true_form_are_exact():
    from overopt.analysis.fits import held_out_predictions

    d = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    gain = bon_curve(d, 1.0, 0.25)
    folds = [0.1, 0.1, 0.3, 0.3, 1.0, 1.0]  # e.g. betas
    np.testing.assert_allclose(held_out_predictions(d, gain, folds, "bon"), gain)
    rl_predictions = held_out_predictions(d, gain, folds, "rl")
    assert np.all(np.isfinite(rl_predictions)) and not np.allclose(rl_predictions, gain)
    # a fold whose complement cannot identify the curve (one distinct d left) is nan
    lonely = held_out_predictions([1.0, 1.0, 2.0], [0.5, 0.5, 0.0], ["a", "a", "b"], "bon")
    assert np.isnan(lonely[:2]).all()


def test_compare_held_out_names_the_true_form_and_needs_two_folds():
    from overopt.analysis.fits import compare_held_out

    rng = np.random.default_rng(0)
    d = np.concatenate([np.linspace(0.1, top, 15) for top in (1.0, 2.0, 3.0, 4.0)])
    folds = np.repeat([1.0, 0.3, 0.1, 0.03], 15)
    gain = rl_curve(d, 1.0, 0.5) + rng.normal(0, 0.02, d.size)
    comparison = compare_held_out(d, gain, folds, groups=folds, n_bootstrap=100)
    assert comparison.preferred == "rl" and comparison.n_folds == 4 and comparison.n_points == 60
    assert comparison.difference < 0 and comparison.difference_ci[1] < 0 and comparison.distinguishable
    assert comparison.rmse["rl"] == pytest.approx(0.02, rel=0.5)
    assert json.loads(json.dumps(comparison.to_dict(), allow_nan=False))["preferred"] == "rl"
    single = compare_held_out(d, gain, np.zeros(d.size))
    assert single.preferred == "" and single.n_points == 0 and not single.distinguishable


def test_peak_identified_needs_the_interval_and_the_resamples():
    kwargs = dict(form="rl", alpha=1.0, beta_f=0.5, d_star=math.e, peak=math.e / 2, rmse=0.0, r2=1.0, n_points=10, n_bootstrap=100)
    assert ScalingFit(**kwargs, beta_f_ci=(0.4, 0.6), peak_fraction=1.0).peak_identified()
    assert not ScalingFit(**kwargs, beta_f_ci=(-0.1, 0.6), peak_fraction=1.0).peak_identified()
    assert not ScalingFit(**kwargs, beta_f_ci=(0.4, 0.6), peak_fraction=0.9).peak_identified()
    quadratic = dict(kwargs, form="quadratic", beta_f=-0.5)
    assert ScalingFit(**quadratic, beta_f_ci=(-0.6, -0.4), peak_fraction=1.0).peak_identified()
    assert not ScalingFit(**quadratic, beta_f_ci=(-0.6, 0.1), peak_fraction=1.0).peak_identified()
