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
Uncertainty comes from a non-parametric bootstrap over points (95% percentile intervals).

Usage:

    from overopt.analysis.fits import fit_scaling_law, compare_fits

    fit = fit_scaling_law(d, gain, form="rl", n_bootstrap=200, seed=0)
    print(fit.alpha, fit.beta_f, fit.d_star, fit.peak, fit.rmse, fit.r2, fit.d_star_ci)
    curve = fit.predict(np.linspace(0, 5, 100))
    fits = compare_fits(d, gain)            # {"rl": ..., "bon": ..., "quadratic": ...}
    json.dumps({name: f.to_dict() for name, f in fits.items()})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

FORMS = ("rl", "bon", "quadratic")
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

    def predict(self, d) -> np.ndarray:
        """R(d) for the fitted coefficients; R(0) = 0 for every form."""
        d = np.asarray(d, dtype=float)
        if np.any(d < 0):
            raise ValueError("d = sqrt(KL) must be non-negative")
        return _design_matrix(self.form, d) @ np.array([self.alpha, self.beta_f])

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values: floats, ints, strings, lists; nan becomes None."""

        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            if isinstance(value, float):
                return None if not math.isfinite(value) else value
            return value

        return {field.name: plain(getattr(self, field.name)) for field in fields(self)}


# ----------------------------------------------------------------------------------------------
# Fitting


def _validate(d, gain) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(d, dtype=float).ravel()
    gain = np.asarray(gain, dtype=float).ravel()
    if d.shape != gain.shape:
        raise ValueError(f"d and gain must have the same length, got {d.size} and {gain.size}")
    if d.size < N_COEFFICIENTS:
        raise ValueError(
            f"need at least {N_COEFFICIENTS} points to fit {N_COEFFICIENTS} coefficients, got {d.size} point(s)"
        )
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


def fit_scaling_law(d, gain, form: str = "rl", n_bootstrap: int = 200, seed: int = 0) -> ScalingFit:
    """Fit R(d) of the given form ("rl", "bon" or "quadratic") to points (d, gain).

    d = sqrt(KL) >= 0; points at d = 0 are allowed and count in the RMSE with prediction 0.
    Bootstrap intervals resample the points with replacement n_bootstrap times
    (numpy default_rng(seed)); n_bootstrap = 0 leaves them nan.
    """
    _check_form(form)
    d, gain = _validate(d, gain)

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

    # Bootstrap: refit on resampled points. Resamples that cannot identify the curve (e.g. all
    # drawn points at d = 0) are skipped rather than retried, so the intervals stay reproducible.
    rng = np.random.default_rng(seed)
    samples = []  # rows of (alpha, beta_f, d_star, peak)
    for _ in range(n_bootstrap):
        index = rng.integers(0, d.size, size=d.size)
        resampled = _least_squares(form, d[index], gain[index])
        if resampled is None:
            continue
        samples.append((*resampled, *_peak(form, *resampled)))
    samples = np.array(samples, dtype=float).reshape(-1, 4)

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
    )


def compare_fits(d, gain, n_bootstrap: int = 200, seed: int = 0) -> dict[str, ScalingFit]:
    """Fit all three forms to the same points: {"rl": ..., "bon": ..., "quadratic": ...}."""
    return {form: fit_scaling_law(d, gain, form=form, n_bootstrap=n_bootstrap, seed=seed) for form in FORMS}
