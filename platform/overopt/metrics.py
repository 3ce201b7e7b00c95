"""Metrics for evaluating one checkpoint: KL to the reference, judged win rate, length bias.

Definitions (docs/architecture.md describes where each number comes from):

KL to the reference
    For responses y_i ~ pi(.|x_i), one per held-out prompt,

        KL(pi || pi_ref) ~= (1/N) sum_i [log pi(y_i|x_i) - log pi_ref(y_i|x_i)]

    where each log-prob is the *sequence* log-prob, i.e. the sum over response tokens of the
    per-token log-probs, both recomputed by a forward pass over the sampled tokens. The standard
    error is the sample standard deviation (ddof=1) divided by sqrt(N). The scaling-law distance is
    d = sqrt(KL). The Monte-Carlo estimate can come out negative (the true KL never is); then d is
    clipped to 0 and the estimate is flagged so the caller can see it happened.

Win rate
    Each policy sample is judged against the prompt's reference response: win = 1, tie = 0.5,
    loss = 0. A judgement that could not be parsed is *invalid* (None or NaN): it is counted and
    reported but excluded from the rate -- never silently scored as a loss. The rate is the mean
    score over valid judgements. Its 95 % interval is the Wilson score interval applied to that
    tie-as-half proportion with n = number of valid judgements. This is an approximation: Wilson
    assumes Bernoulli (0/1) outcomes, and ties make the per-judgement variance smaller than
    p(1-p), so with many ties the interval is somewhat conservative (too wide), never too narrow.

Proxy win rate
    The proxy (the labeller that made the training pairs, or a reward model standing for it) gives,
    per prompt, the probability p_i that it prefers the policy's sample over the baseline response
    (its Bradley-Terry choice probability). The proxy win rate is their mean; its 95 % interval is
    mean +- z * sd(p, ddof=1) / sqrt(N), clipped to [0, 1]: the spread over prompts, since each p_i is
    already an expectation over the proxy's label noise.

Length regression
    Ordinary least squares of the per-sample log-ratio log pi(y|x) - log pi_ref(y|x) on response
    length (in tokens); we report slope, intercept and R^2. A large R^2 means the policy's movement
    away from the reference is mostly explained by length (length exploitation).

All functions take numpy arrays, lists or torch tensors (anything ``np.asarray`` accepts) and
return frozen dataclasses whose ``to_dict()`` gives plain Python floats, ints and bools (overopt.jsonsafe; an
undefined value stays a float nan, which ``json.dumps`` writes as NaN).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from overopt.jsonsafe import json_safe

# Two-sided 95 % normal quantile, ~1.959964; taken from scipy rather than hard-coded as 1.96.
Z_95 = float(stats.norm.ppf(0.975))


def _as_float_array(values: Any, name: str, ndim: int) -> np.ndarray:
    """Convert to a float64 array of the given rank, or raise a ValueError naming `name`."""
    if hasattr(values, "detach"):  # torch tensor: move to host memory without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    return array


def _require_finite(array: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array.ravel()))
        raise ValueError(f"{name} contains {bad.size} non-finite value(s), first at flat index {bad[0]}: {array.ravel()[bad[0]]}")


class _ToDict:
    def to_dict(self) -> dict:
        assert dataclasses.is_dataclass(self)  # mixed into dataclasses only
        return {field.name: json_safe(getattr(self, field.name), keep_non_finite=True) for field in dataclasses.fields(self)}


# ------------------------------------------------------------------------------------------------
# KL to the reference


@dataclass(frozen=True)
class KLEstimate(_ToDict):
    kl: float  # mean over samples of log pi(y|x) - log pi_ref(y|x), in nats
    kl_se: float  # standard error of that mean (ddof=1 std / sqrt(n))
    d: float  # sqrt(max(kl, 0)), the scaling-law distance
    negative: bool  # True when the raw estimate was < 0 and d was clipped to 0
    n: int  # number of samples


def kl_to_reference(policy_logps: Any, reference_logps: Any) -> KLEstimate:
    """Monte-Carlo KL(pi || pi_ref) from sequence log-probs of samples drawn from pi, shape [N].

    Needs N >= 2 so that the standard error is defined.
    """
    policy = _as_float_array(policy_logps, "policy_logps", ndim=1)
    reference = _as_float_array(reference_logps, "reference_logps", ndim=1)
    if policy.shape != reference.shape:
        raise ValueError(f"shape mismatch: policy_logps {policy.shape} vs reference_logps {reference.shape}")
    if policy.size < 2:
        raise ValueError(f"need at least 2 samples for a KL estimate with a standard error, got {policy.size}")
    _require_finite(policy, "policy_logps")
    _require_finite(reference, "reference_logps")

    log_ratios = policy - reference
    n = log_ratios.size
    kl = float(log_ratios.mean())
    kl_se = float(log_ratios.std(ddof=1) / math.sqrt(n))
    return KLEstimate(kl=kl, kl_se=kl_se, d=math.sqrt(max(kl, 0.0)), negative=kl < 0.0, n=n)


# ------------------------------------------------------------------------------------------------
# Win rate


@dataclass(frozen=True)
class WinRate(_ToDict):
    rate: float  # mean score over valid judgements (win 1, tie 0.5, loss 0); nan if none valid
    low: float  # lower end of the 95 % Wilson interval
    high: float  # upper end of the 95 % Wilson interval
    n_valid: int
    n_invalid: int  # unparseable judgements: excluded from the rate, not counted as losses
    n_wins: int
    n_ties: int
    n_losses: int


def wilson_interval(proportion: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion observed over n trials; (nan, nan) when n == 0.

    center = (p + z^2/(2n)) / (1 + z^2/n)
    half   = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
    Unlike the normal (Wald) interval it stays inside [0, 1] and is sensible at p = 0 or 1.
    """
    if n == 0:
        return (math.nan, math.nan)
    z2_over_n = z * z / n
    denominator = 1.0 + z2_over_n
    center = (proportion + z2_over_n / 2.0) / denominator
    half_width = z / denominator * math.sqrt(proportion * (1.0 - proportion) / n + z2_over_n / (4.0 * n))
    # Clamp away floating-point overshoot at p = 0 or 1.
    return (max(0.0, center - half_width), min(1.0, center + half_width))


def _outcome_as_float(outcome: Any) -> float:
    """One judgement -> 1.0 / 0.5 / 0.0, or nan if invalid; ValueError for anything else."""
    if outcome is None:
        return math.nan
    try:
        value = float(outcome)
    except (TypeError, ValueError):
        raise ValueError(f"invalid judgement outcome {outcome!r}: expected 1, 0.5, 0, None or nan") from None
    if math.isnan(value) or value in (0.0, 0.5, 1.0):
        return value
    raise ValueError(f"invalid judgement outcome {outcome!r}: expected 1, 0.5, 0, None or nan")


def win_rate(outcomes: Any) -> WinRate:
    """Win rate of the policy over the reference from per-prompt judgements.

    outcomes: 1 = win, 0.5 = tie, 0 = loss, None or nan = invalid (judge answer unparseable).
    With no valid judgement at all the rate and interval are nan rather than an error, so that an
    evaluation where the judge failed everywhere is still recorded.
    """
    if hasattr(outcomes, "detach"):  # torch tensor
        outcomes = outcomes.detach().cpu().numpy()
    if isinstance(outcomes, np.ndarray):
        if outcomes.ndim != 1:
            raise ValueError(f"outcomes must be 1-dimensional, got shape {outcomes.shape}")
        outcomes = outcomes.tolist()
    scores = np.array([_outcome_as_float(outcome) for outcome in outcomes], dtype=np.float64)

    valid = ~np.isnan(scores)
    valid_scores = scores[valid]
    n_valid = int(valid.sum())
    rate = float(valid_scores.mean()) if n_valid > 0 else math.nan
    low, high = wilson_interval(rate, n_valid)
    return WinRate(
        rate=rate,
        low=low,
        high=high,
        n_valid=n_valid,
        n_invalid=int(scores.size - n_valid),
        n_wins=int((valid_scores == 1.0).sum()),
        n_ties=int((valid_scores == 0.5).sum()),
        n_losses=int((valid_scores == 0.0).sum()),
    )


@dataclass(frozen=True)
class ProxyWinRate(_ToDict):
    rate: float  # mean over prompts of the proxy's probability of preferring the policy's sample; nan if none
    low: float  # lower end of the 95 % interval (normal, over prompts)
    high: float  # upper end
    n: int  # probabilities averaged (NaN ones left out)


def proxy_win_rate(probabilities: Any) -> ProxyWinRate:
    """Mean proxy preference probability with its 95 % interval (module docstring); NaNs are left out."""
    p = _as_float_array(probabilities, "probabilities", ndim=1)
    p = p[~np.isnan(p)]
    if np.any((p < 0) | (p > 1)):
        raise ValueError("proxy preference probabilities must lie in [0, 1]")
    if p.size == 0:
        return ProxyWinRate(math.nan, math.nan, math.nan, 0)
    rate = float(p.mean())
    if p.size == 1:  # no spread to measure: no interval
        return ProxyWinRate(rate, math.nan, math.nan, 1)
    half = Z_95 * float(p.std(ddof=1)) / math.sqrt(p.size)
    return ProxyWinRate(rate, max(0.0, rate - half), min(1.0, rate + half), int(p.size))


def judge_outcome(policy_score: Any, reference_score: Any, tie_tolerance: float = 1e-9) -> float | None:
    """Compare two scalar scores (e.g. gold rewards): 1 if the policy's is higher, 0 if lower,
    0.5 if they are within tie_tolerance, None if either score is missing (None or nan)."""
    if policy_score is None or reference_score is None:
        return None
    policy_value, reference_value = float(policy_score), float(reference_score)
    if math.isnan(policy_value) or math.isnan(reference_value):
        return None
    if abs(policy_value - reference_value) <= tie_tolerance:
        return 0.5
    return 1.0 if policy_value > reference_value else 0.0


# ------------------------------------------------------------------------------------------------
# Length regression


@dataclass(frozen=True)
class LengthRegression(_ToDict):
    slope: float  # change in log-ratio (nats) per extra response token
    intercept: float
    r2: float  # fraction of log-ratio variance explained by length
    n: int


def length_regression(log_ratios: Any, lengths: Any) -> LengthRegression:
    """OLS of per-sample log pi(y|x) - log pi_ref(y|x) on response length.

    With fewer than 3 points, or all lengths equal, the fit is not meaningful (2 points always fit
    with R^2 = 1) or not defined; we return nan slope/intercept/r2 instead of raising, because at
    step 0 -- and in tiny tests with a fixed max length -- all lengths can legitimately coincide.
    If the log-ratios are all equal (but lengths vary), scipy reports r = 0, so r2 = 0.
    """
    ratios = _as_float_array(log_ratios, "log_ratios", ndim=1)
    length_array = _as_float_array(lengths, "lengths", ndim=1)
    if ratios.shape != length_array.shape:
        raise ValueError(f"shape mismatch: log_ratios {ratios.shape} vs lengths {length_array.shape}")
    _require_finite(ratios, "log_ratios")
    _require_finite(length_array, "lengths")

    n = ratios.size
    if n < 3 or np.ptp(length_array) == 0:
        return LengthRegression(slope=math.nan, intercept=math.nan, r2=math.nan, n=n)
    fit = stats.linregress(length_array, ratios)
    return LengthRegression(slope=float(fit.slope), intercept=float(fit.intercept), r2=float(fit.rvalue**2), n=n)
