"""Scaling-law fits of reward over-optimization (Gao et al. 2022 forms, with d = sqrt(KL)).

Every aligned checkpoint gives one point (d, gain): d = sqrt(KL(policy || reference)) and gain is
how much better the policy is than the reference (win rate minus the reference's own win rate, or
gold reward minus the reference's gold reward). We fit three curves through the origin, because a
policy that has not moved (d = 0) cannot have gained anything (R(0) = 0):

    RL form          R(d) = d * (alpha - beta_f * ln d)      peak at d* = exp(alpha / beta_f - 1),
                                                              R(d*) = beta_f * d*
    best-of-n form   R(d) = d * (alpha - beta_f * d)         peak at d* = alpha / (2 beta_f),
                                                              R(d*) = alpha^2 / (4 beta_f)
    quadratic (KL)   R    = c1 * KL + c2 * KL^2, KL = d^2    peak at KL* = -c1 / (2 c2),
                                                              R(d*) = -c1^2 / (4 c2)

For the quadratic baseline ``ScalingFit.alpha`` holds c1 and ``ScalingFit.beta_f`` holds c2 (no sign
flip: a hump needs c1 > 0 and c2 < 0). A form only has a peak (d_star, peak finite) when the fitted
curve rises and then falls for d > 0; otherwise both are nan.

All three forms are linear in their two coefficients once d is fixed, e.g. the RL form is
R = alpha * d - beta_f * (d ln d). So the least-squares fit is an ordinary linear least-squares
problem with a unique global optimum: no starting guess, no local minima, no convergence failures.

Uncertainty: a non-parametric bootstrap (95 % percentile intervals). Evaluations of one training run
share its trajectory and are not independent, so when ``groups`` (one label per point, e.g. the trial
(objective, beta, size, seed)) is given, a resample draws whole groups with replacement (a cluster
bootstrap; with fewer than MIN_GROUPS_FOR_BOOTSTRAP groups there are no intervals); without it,
single points are drawn. When ``recentre_on`` marks the points that measure
the reference itself (step 0), each resample re-centres the gains on the mean of *its own* reference
points, so the baseline's uncertainty is part of the intervals. ``peak_fraction`` is the share of
resamples whose curve has an interior peak: a peak is identified only when (nearly) all do.

Honest comparison of the forms: in-sample RMSE and R^2 favour the more flexible shape on the data it
saw. ``compare_held_out`` instead fits each form on all betas but one and predicts the held-out
beta's points (leave-one-beta-out: a beta is a whole region of the (d, gain) curve the fit has not
seen), and names the form with the lowest held-out RMSE, with a grouped-bootstrap interval on the
RMSE difference to the runner-up.

One module: the fits, their bootstrap and the held-out comparison all run on one design matrix and
least-squares solver per form (``_design_matrix``, ``_least_squares``).

Usage:

    from overopt.analysis.fits import fit_scaling_law, compare_fits, compare_held_out

    fit = fit_scaling_law(d, gain, form="rl", n_bootstrap=200, seed=0, groups=trial_ids)
    print(fit.alpha, fit.beta_f, fit.d_star, fit.peak, fit.rmse, fit.r2, fit.d_star_ci)
    curve = fit.predict(np.linspace(0, 5, 100))
    fits = compare_fits(d, gain)            # {"rl": ..., "bon": ..., "quadratic": ...}
    json.dumps({name: f.to_dict() for name, f in fits.items()})
    held_out = compare_held_out(d, gain, folds=betas, groups=trial_ids, evaluate=step > 0)
    print(held_out.preferred, held_out.rmse, held_out.difference_ci)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from overopt.jsonsafe import json_safe

FORMS = ("rl", "bon", "quadratic")
MIN_GROUPS_FOR_BOOTSTRAP = 4  # fewer whole trials give too few distinct resamples: no intervals then
N_COEFFICIENTS = 2  # every form has two free coefficients: (alpha, beta_f), or (c1, c2)

Interval = tuple[float, float]
NAN_INTERVAL: Interval = (math.nan, math.nan)


# ----------------------------------------------------------------------------------------------
# The forms: design matrices and closed-form peaks


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid choices are {', '.join(repr(f) for f in FORMS)}")


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """d * ln d with its limit 0 at d = 0 (ln 0 would otherwise give 0 * -inf = nan)."""
    safe_d = np.where(d > 0, d, 1.0)  # ln 1 = 0, so d = 0 contributes exactly 0
    return d * np.log(safe_d)


def _design_matrix(form: str, d: np.ndarray) -> np.ndarray:
    """Columns X such that R(d) = X @ [alpha, beta_f] (quadratic: X @ [c1, c2])."""
    if form == "rl":
        return np.stack([d, -_d_log_d(d)], axis=-1)
    if form == "bon":
        return np.stack([d, -d * d], axis=-1)
    kl = d * d
    return np.stack([kl, kl * kl], axis=-1)


def _peak(form: str, alpha: float, beta_f: float) -> tuple[float, float]:
    """(d_star, R(d_star)) of the interior maximum over d > 0, or (nan, nan) if there is none."""
    if form == "rl":
        # beta_f <= 0 makes R convex or linear in d: it never turns over.
        if beta_f <= 0:
            return math.nan, math.nan
        exponent = alpha / beta_f - 1.0
        if exponent > 700:  # exp would overflow: the peak is so far out it is not a peak at all
            return math.nan, math.nan
        d_star = math.exp(exponent)
        return d_star, beta_f * d_star
    if form == "bon":
        # Needs a falling quadratic term (beta_f > 0) and an initial rise (alpha > 0),
        # otherwise the maximum over d >= 0 is at the boundary d = 0.
        if beta_f <= 0 or alpha <= 0:
            return math.nan, math.nan
        return alpha / (2.0 * beta_f), alpha * alpha / (4.0 * beta_f)
    c1, c2 = alpha, beta_f
    if c2 >= 0 or c1 <= 0:
        return math.nan, math.nan
    kl_star = -c1 / (2.0 * c2)
    return math.sqrt(kl_star), -c1 * c1 / (4.0 * c2)


def _least_squares(form: str, d: np.ndarray, gain: np.ndarray) -> tuple[float, float] | None:
    """Linear least-squares coefficients, or None when the data cannot identify both of them."""
    design = _design_matrix(form, d)
    coefficients, _, rank, _ = np.linalg.lstsq(design, gain, rcond=None)
    if rank < N_COEFFICIENTS:
        return None
    return float(coefficients[0]), float(coefficients[1])


# ----------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class ScalingFit:
    """One fitted over-optimization curve. For form "quadratic", alpha = c1 and beta_f = c2."""

    form: str
    alpha: float
    beta_f: float
    d_star: float  # location of the peak in d = sqrt(KL); nan if the curve has no interior peak
    peak: float  # predicted gain at d_star; nan if no peak
    rmse: float
    r2: float  # nan when the gains have zero variance (R^2 is undefined then)
    n_points: int
    alpha_ci: Interval = NAN_INTERVAL  # bootstrap 95% percentile intervals, (low, high)
    beta_f_ci: Interval = NAN_INTERVAL
    d_star_ci: Interval = NAN_INTERVAL  # over the resamples whose curve has a peak
    peak_ci: Interval = NAN_INTERVAL
    n_bootstrap: int = 0  # resamples that identified the curve (degenerate ones are skipped)
    peak_fraction: float = math.nan  # share of those resamples whose curve has an interior peak
    bootstrap_unit: str = "point"  # what a resample draws: "point" or "group" (whole trials)
    n_groups: int = 0  # distinct groups (trials) when bootstrap_unit == "group"

    def peak_identified(self) -> bool:
        """A peak the data support: fitted, beta_f's interval excludes 0 (c2's below 0 for the quadratic),
        and at least 97.5 % of the bootstrap resamples have one too."""
        if not math.isfinite(self.d_star) or self.n_bootstrap == 0:
            return False
        low, high = self.beta_f_ci
        excludes_zero = high < 0 if self.form == "quadratic" else low > 0
        return bool(excludes_zero and self.peak_fraction >= 0.975)

    def predict(self, d) -> np.ndarray:
        """R(d) for the fitted coefficients; R(0) = 0 for every form."""
        d = np.asarray(d, dtype=float)
        if np.any(d < 0):
            raise ValueError("d = sqrt(KL) must be non-negative")
        return _design_matrix(self.form, d) @ np.array([self.alpha, self.beta_f])

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values: floats, ints, strings, lists; nan becomes None (overopt.jsonsafe)."""
        return json_safe({field.name: getattr(self, field.name) for field in fields(self)})


# ----------------------------------------------------------------------------------------------
# Fitting


def _validate(d, gain) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(d, dtype=float).ravel()
    gain = np.asarray(gain, dtype=float).ravel()
    if d.shape != gain.shape:
        raise ValueError(f"d and gain must have the same length, got {d.size} and {gain.size}")
    if d.size < N_COEFFICIENTS:
        raise ValueError(f"need at least {N_COEFFICIENTS} points to fit {N_COEFFICIENTS} coefficients, got {d.size} point(s)")
    if not np.all(np.isfinite(d)):
        raise ValueError("d contains non-finite values (nan or inf)")
    if np.any(d < 0):
        raise ValueError(f"d = sqrt(KL) must be non-negative, got min(d) = {d.min():g}")
    if not np.all(np.isfinite(gain)):
        raise ValueError("gain contains non-finite values (nan or inf)")
    if np.all(d == 0):
        # Every form is 0 at d = 0 whatever its coefficients, so such points say nothing about them.
        raise ValueError("all d are 0: points at the reference cannot identify the curve")
    return d, gain


def _percentile_interval(samples: np.ndarray) -> Interval:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return NAN_INTERVAL
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _bootstrap_indices(rng: np.random.Generator, n: int, groups: list[np.ndarray] | None) -> np.ndarray:
    """Point indices of one resample: n points, or len(groups) whole groups, drawn with replacement."""
    if groups is None:
        return rng.integers(0, n, size=n)
    drawn = rng.integers(0, len(groups), size=len(groups))
    return np.concatenate([groups[g] for g in drawn])


def _labels(values, n: int, name: str) -> list:
    """One hashable label per point (tuples such as (objective, beta, size, seed) are fine)."""
    if isinstance(values, np.ndarray) and values.ndim > 1:
        labels = [tuple(row) for row in values.tolist()]
    else:
        labels = [tuple(v) if isinstance(v, (list, np.ndarray)) else v for v in list(values)]
    if len(labels) != n:
        raise ValueError(f"{name} must have one label per point: got {len(labels)} labels for {n} points")
    return labels


def _group_members(groups, n: int) -> list[np.ndarray] | None:
    """Point indices of each distinct group label (None when no groups were given)."""
    if groups is None:
        return None
    index: dict = {}
    for i, label in enumerate(_labels(groups, n, "groups")):
        index.setdefault(label, []).append(i)
    return [np.array(members) for members in index.values()]


def _mask(values, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    mask = np.asarray(values, dtype=bool).ravel()
    if mask.size != n:
        raise ValueError(f"{name} must have one entry per point: got {mask.size} for {n} points")
    return mask


def fit_scaling_law(d, gain, form: str = "rl", n_bootstrap: int = 200, seed: int = 0, groups=None, recentre_on=None) -> ScalingFit:
    """Fit R(d) of the given form ("rl", "bon" or "quadratic") to points (d, gain).

    d = sqrt(KL) >= 0; points at d = 0 are allowed and count in the RMSE with prediction 0.
    Bootstrap intervals refit n_bootstrap resamples (numpy default_rng(seed)); n_bootstrap = 0 leaves
    them nan. ``groups`` (one label per point): resample whole groups instead of points.
    ``recentre_on`` (boolean mask of reference points): each resample subtracts the mean gain of its
    own reference points (resamples without one are skipped). The point estimate is unaffected when
    the given gains already average 0 over the reference points, as they do when the caller measured
    the baseline from those same points.
    """
    _check_form(form)
    d, gain = _validate(d, gain)
    members = _group_members(groups, d.size)
    reference = _mask(recentre_on, d.size, "recentre_on")

    coefficients = _least_squares(form, d, gain)
    if coefficients is None:
        raise ValueError(
            f"the {form!r} form cannot be identified from these points: it needs at least "
            f"{N_COEFFICIENTS} distinct non-zero d values (and, for 'rl', not only d = 1)"
        )
    alpha, beta_f = coefficients
    d_star, peak = _peak(form, alpha, beta_f)

    residuals = gain - _design_matrix(form, d) @ np.array([alpha, beta_f])
    rmse = float(np.sqrt(np.mean(residuals**2)))
    total_sum_of_squares = float(np.sum((gain - gain.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residuals**2)) / total_sum_of_squares if total_sum_of_squares > 0 else math.nan

    # Bootstrap: refit on resamples. Resamples that cannot identify the curve (e.g. all drawn points
    # at d = 0) are skipped rather than retried, so the intervals stay reproducible.
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, ...]] = []  # (alpha, beta_f, d_star, peak) per resample
    if members is not None and len(members) < MIN_GROUPS_FOR_BOOTSTRAP:
        n_bootstrap = 0  # 1-3 trials: a trial bootstrap would be meaningless, so no intervals at all
    for _ in range(n_bootstrap):
        index = _bootstrap_indices(rng, d.size, members)
        resampled_gain = gain[index]
        if reference is not None:
            if not reference[index].any():
                continue
            resampled_gain = resampled_gain - resampled_gain[reference[index]].mean()
        resampled = _least_squares(form, d[index], resampled_gain)
        if resampled is None:
            continue
        rows.append((*resampled, *_peak(form, *resampled)))
    samples = np.array(rows, dtype=float).reshape(-1, 4)

    return ScalingFit(
        form=form,
        alpha=alpha,
        beta_f=beta_f,
        d_star=d_star,
        peak=peak,
        rmse=rmse,
        r2=r2,
        n_points=int(d.size),
        alpha_ci=_percentile_interval(samples[:, 0]),
        beta_f_ci=_percentile_interval(samples[:, 1]),
        d_star_ci=_percentile_interval(samples[:, 2]),
        peak_ci=_percentile_interval(samples[:, 3]),
        n_bootstrap=len(samples),
        peak_fraction=float(np.isfinite(samples[:, 2]).mean()) if len(samples) else math.nan,
        bootstrap_unit="point" if members is None else "group",
        n_groups=0 if members is None else len(members),
    )


def compare_fits(d, gain, n_bootstrap: int = 200, seed: int = 0, groups=None, recentre_on=None) -> dict[str, ScalingFit]:
    """Fit all three forms to the same points: {"rl": ..., "bon": ..., "quadratic": ...}."""
    return {
        form: fit_scaling_law(d, gain, form=form, n_bootstrap=n_bootstrap, seed=seed, groups=groups, recentre_on=recentre_on)
        for form in FORMS
    }


# ----------------------------------------------------------------------------------------------
# Held-out comparison of the forms


def held_out_predictions(d, gain, folds, form: str = "rl") -> np.ndarray:
    """Each point's prediction from a fit on all *other* folds (e.g. folds = the points' betas).

    A fold whose complement cannot identify the curve gets nan predictions.
    """
    _check_form(form)
    d, gain = _validate(d, gain)
    labels = _labels(folds, d.size, "folds")
    predictions = np.full(d.size, math.nan)
    for label in dict.fromkeys(labels):
        held = np.array([other == label for other in labels])
        if held.all():
            continue
        coefficients = _least_squares(form, d[~held], gain[~held])
        if coefficients is not None:
            predictions[held] = _design_matrix(form, d[held]) @ np.array(coefficients)
    return predictions


@dataclass(frozen=True)
class HeldOutComparison:
    """Leave-one-fold-out prediction error of every form on the same points."""

    rmse: dict  # form -> held-out RMSE over the evaluated points
    in_sample_rmse: dict  # form -> RMSE of the fit on all points (for contrast)
    n_points: int  # points whose held-out prediction entered the RMSE
    n_folds: int
    preferred: str  # form with the lowest held-out RMSE ("" when no form could be evaluated)
    runner_up: str
    difference: float  # RMSE(preferred) - RMSE(runner_up), <= 0
    difference_ci: Interval  # 95 % bootstrap interval of that difference (whole groups resampled)
    distinguishable: bool  # the interval lies entirely below 0

    def to_dict(self) -> dict:
        return json_safe({field.name: getattr(self, field.name) for field in fields(self)})


def compare_held_out(d, gain, folds, groups=None, evaluate=None, n_bootstrap: int = 200, seed: int = 0) -> HeldOutComparison:
    """Leave-one-fold-out RMSE of each form; the preferred form is the one with the lowest.

    folds: a label per point (the beta of its trial): each fold is predicted by a fit on the others.
    evaluate: optional mask of the points whose held-out errors count (e.g. step > 0: the reference
    points sit at d ~ 0, where every form predicts 0, so they cannot tell the forms apart).
    groups: labels of the resampling unit (trials) for the interval on the RMSE difference between
    the preferred form and the runner-up; points otherwise. Only points every form could predict count.
    """
    d, gain = _validate(d, gain)
    labels = _labels(folds, d.size, "folds")
    keep = _mask(evaluate, d.size, "evaluate")
    keep = np.ones(d.size, bool) if keep is None else keep.copy()
    errors = {form: held_out_predictions(d, gain, labels, form) - gain for form in FORMS}
    for err in errors.values():
        keep &= np.isfinite(err)
    squared = {form: errors[form][keep] ** 2 for form in FORMS}
    in_sample = {}
    for form in FORMS:
        coefficients = _least_squares(form, d, gain)
        in_sample[form] = (
            math.nan if coefficients is None else float(np.sqrt(np.mean((gain - _design_matrix(form, d) @ np.array(coefficients)) ** 2)))
        )
    n_folds = len(set(labels))
    if not keep.any():
        nan_rmse = {form: math.nan for form in FORMS}
        return HeldOutComparison(nan_rmse, in_sample, 0, n_folds, "", "", math.nan, NAN_INTERVAL, False)
    rmse = {form: float(np.sqrt(squared[form].mean())) for form in FORMS}
    ranked = sorted(FORMS, key=lambda form: rmse[form])
    best, second = ranked[0], ranked[1]

    kept_groups = None if groups is None else [g for g, k in zip(_labels(groups, d.size, "groups"), keep) if k]
    members = _group_members(kept_groups, int(keep.sum()))
    rng = np.random.default_rng(seed)
    differences = []
    if members is not None and len(members) < MIN_GROUPS_FOR_BOOTSTRAP:
        n_bootstrap = 0
    for _ in range(n_bootstrap):
        index = _bootstrap_indices(rng, int(keep.sum()), members)
        differences.append(np.sqrt(squared[best][index].mean()) - np.sqrt(squared[second][index].mean()))
    interval = _percentile_interval(np.array(differences)) if differences else NAN_INTERVAL
    return HeldOutComparison(
        rmse=rmse,
        in_sample_rmse=in_sample,
        n_points=int(keep.sum()),
        n_folds=n_folds,
        preferred=best,
        runner_up=second,
        difference=rmse[best] - rmse[second],
        difference_ci=interval,
        distinguishable=bool(math.isfinite(interval[1]) and interval[1] < 0),
    )
