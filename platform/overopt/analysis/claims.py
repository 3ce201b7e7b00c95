"""The report's claims: sentences worded from the fits', the binned curves' and the correlations'
intervals, so that no sentence says more than its interval does.

    claims = fit_claims(fits, comparisons, results)   # {"dpo/tiny": [rise, RL peak, best-of-n peak, preferred form]}
    peak_claim(fits["dpo", "tiny"]["rl"], d_max)       # one sentence

A peak is only called identified when beta_f's (c2's) interval excludes 0 and the bootstrap resamples
turn over (ScalingFit.peak_identified); it is located when d*'s interval lies inside the observed d.
report.py writes the claims into fits.json; the report's sections (report_sections.py) list them.
Also here: the definitions of the baseline and the intervals that fits.json and report.md both state.
"""

from __future__ import annotations

import math

import pandas as pd

from overopt.analysis.correlations import Correlation
from overopt.analysis.fits import ScalingFit
from overopt.analysis.formatting import ci_text, num

BASELINE_TEXT = (
    "gain = win rate - the measured step-0 win rate of the same objective and size (the reference model "
    "judged on this eval set; 0.5 only where a (objective, size) has no step-0 evaluation)"
)
BOOTSTRAP_TEXT = (
    "95 % percentile bootstrap intervals; a resample draws whole trials (objective, beta, size, seed) and re-measures the step-0 baseline"
)
FORM_NAMES = {"rl": "RL d(a - b ln d)", "bon": "best-of-n d(a - b d)", "quadratic": "quadratic in KL (c1, c2)"}


def short_name(form: str) -> str:
    """'RL', 'best-of-n' or 'quadratic'."""
    return FORM_NAMES[form].split(" ")[0]


def peak_claim(fit: ScalingFit, d_max: float) -> str:
    """What the fit says about a peak, without contradicting its intervals."""
    name = short_name(fit.form)
    coefficient = "c2" if fit.form == "quadratic" else "beta_f"
    if not fit.peak_identified():
        if fit.n_bootstrap == 0:
            why = f"{fit.n_groups} trial(s) are too few to resample" if fit.bootstrap_unit == "group" else "no bootstrap"
            return f"{name}: peak not assessed ({why}; d* = {num(fit.d_star, 2)} is a point estimate only)."
        share = f"{100 * fit.peak_fraction:.0f} %" if math.isfinite(fit.peak_fraction) else "-"
        return (
            f"{name}: peak not identified ({coefficient} = {num(fit.beta_f)} {ci_text(fit.beta_f_ci)}; {share} of the resamples turn over)."
        )
    low, high = fit.d_star_ci
    where = f"d* = {num(fit.d_star, 2)} {ci_text(fit.d_star_ci)}"
    if high <= d_max:
        return f"{name}: peak identified inside the observed range, {where} (observed d up to {d_max:.2f})."
    if low > d_max:
        return f"{name}: the curve turns over only beyond the observed range, {where} (observed d up to {d_max:.2f})."
    return f"{name}: peak identified but not located: {where} reaches past the observed d (up to {d_max:.2f})."


def rise_claim(fit: ScalingFit) -> str:
    """Whether the fit's initial slope alpha is established above 0."""
    low, _ = fit.alpha_ci
    if fit.n_bootstrap == 0:
        return f"initial rise not assessed without intervals (alpha = {num(fit.alpha)})."
    if math.isfinite(low) and low > 0:
        return f"initial rise: alpha = {num(fit.alpha)} {ci_text(fit.alpha_ci)} > 0."
    return f"initial rise not established (alpha = {num(fit.alpha)} {ci_text(fit.alpha_ci)})."


def binned_claim(curve) -> str:
    """Rise and fall of the pooled bins, worded from their trial-bootstrap intervals."""

    def part(name, value, interval, present, absent):
        if not math.isfinite(interval[0]):
            return f"{name} {num(value)} (no interval)"
        return f"{name} {num(value)} {ci_text(interval, 3)}: " + (present if interval[0] > 0 else absent)

    return (
        f"{curve.objective}: "
        + "; ".join(
            [
                part("rise", curve.rise, curve.rise_ci, "a gain over the reference", "no gain established"),
                part("fall", curve.fall, curve.fall_ci, "a decline at the largest d", "no decline established"),
            ]
        )
        + "."
    )


def form_claim(comparison) -> str:
    """The form with the lowest leave-one-beta-out error, and whether the runner-up is worse beyond its interval."""
    if comparison is None or not comparison.preferred:
        return "Preferred form: not determined (needs at least two betas with fits)."
    rmse = comparison.rmse
    verdict = (
        "its held-out error is lower than the runner-up's (interval below 0)"
        if comparison.distinguishable
        else f"not distinguishable from {short_name(comparison.runner_up)} (interval includes 0)"
    )
    others = ", ".join(f"{short_name(f)} {num(v)}" for f, v in rmse.items() if f != comparison.preferred)
    return (
        f"Preferred form by leave-one-beta-out error: **{short_name(comparison.preferred)}** "
        f"(held-out RMSE {num(rmse[comparison.preferred])} vs {others}; difference to the runner-up "
        f"{num(comparison.difference)} {ci_text(comparison.difference_ci, 3)}: {verdict}; {comparison.n_points} points, "
        f"{comparison.n_folds} betas)."
    )


def fit_claims(fits: dict, comparisons: dict, results: pd.DataFrame) -> dict[str, list[str]]:
    """Per "objective/size": the RL fit's rise, the RL and best-of-n peaks (against the largest d observed
    there) and the preferred form."""
    claims = {}
    for (objective, size), forms in fits.items():
        d_max = float(results.loc[(results["objective"] == objective) & (results["size"] == size), "d"].max())
        claims[f"{objective}/{size}"] = [
            rise_claim(forms["rl"]),
            peak_claim(forms["rl"], d_max),
            peak_claim(forms["bon"], d_max),
            form_claim(comparisons.get((objective, size))),
        ]
    return claims


def length_claim(size: str, c: Correlation) -> str:
    """Whether length explains more of the log-ratio at smaller or larger KL (Spearman(length_r2, KL))."""
    if not math.isfinite(c.r):
        return f"{size}: length_r2 vs KL undefined (too few evaluations or no variation)."
    if c.excludes_zero():
        direction = "smaller" if c.r < 0 else "larger"
        return f"{size}: length explains more of the log-ratio at {direction} KL (Spearman {c.text()})."
    return f"{size}: no clear trend of length_r2 with KL (Spearman {c.text()}, interval includes 0)."


def training_claim(size: str, metric: str, c: Correlation) -> str:
    """Whether a training metric predicts win rate (its Spearman correlation with it)."""
    if not math.isfinite(c.r):
        return f"{size} / {metric}: undefined."
    if c.excludes_zero():
        return f"{size} / {metric}: correlated with win rate (Spearman {c.text()}); rho^2 = {c.r**2:.2f} of the rank variance."
    return f"{size} / {metric}: no evidence that it predicts win rate (Spearman {c.text()}, interval includes 0)."
