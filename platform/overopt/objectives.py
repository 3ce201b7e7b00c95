"""Direct Alignment Algorithm objectives as pure functions of per-sequence log-probs.

Every objective takes the summed response log-probs of the chosen (y_w) and rejected (y_l) responses
under the policy and under the frozen reference model, shape [B] each, and returns an
``ObjectiveOutput`` whose ``loss`` is the batch mean and whose diagnostics are those
every run logs. With

    chosen_log_ratio   = log pi(y_w|x) - log pi_ref(y_w|x)                       [B]
    rejected_log_ratio = log pi(y_l|x) - log pi_ref(y_l|x)                       [B]
    h                  = chosen_log_ratio - rejected_log_ratio                   [B]

the losses (per pair, then averaged) are

    dpo    -log sigmoid(beta * h)
    ipo    (beta*h - 1)^2             (the DAA scaling-law paper's form; fixed point h = 1/beta. The IPO
                                       paper writes (h - 1/(2*tau))^2, fixed point h = 1/(2*tau): the two
                                       agree only at tau = beta/2, they are NOT a constant factor apart.
                                       We use the DAA paper's beta so its grid means the same here.
                                       Sequence sums, not length-normalised, as in that paper.)
    slic   max(0, 1 - beta * h)       (SLiC-HF hinge)
    cdpo   -(1-eps) log sigmoid(beta*h) - eps log sigmoid(-beta*h)   (label smoothing eps)
    rdpo   -log sigmoid(beta*h + alpha*(|y_w| - |y_l|))   (length-regularised DPO, alpha = length_alpha.
                                       Maximising r - alpha*|y| under the KL constraint makes the implied
                                       reward beta*log(pi/pi_ref) + alpha*|y|, so the length gap enters
                                       with a PLUS: a longer chosen answer already explains part of the
                                       preference and pushes the policy less; a minus would reward verbosity)
    simpo  -log sigmoid(beta * (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - gamma)
                                      (reference-free: the reference log-probs are ignored)

The reported ``reward_margin`` is the quantity inside the loss's link (beta*h for dpo/ipo/slic/cdpo,
beta*h + alpha*(|y_w| - |y_l|) for rdpo, the SimPO margin for simpo); ``implicit_accuracy`` is the
fraction of pairs where it is positive.

Usage:
    from overopt.objectives import compute_objective
    out = compute_objective("dpo", beta=0.1, policy_chosen_logps=..., policy_rejected_logps=...,
                            reference_chosen_logps=..., reference_rejected_logps=...)
    out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ObjectiveOutput:
    """A loss (scalar, differentiable) and detached per-batch diagnostics (scalars)."""

    loss: torch.Tensor
    implicit_accuracy: torch.Tensor  # fraction of pairs whose implicit reward prefers y_w (margin > 0)
    reward_margin: torch.Tensor  # mean beta * h (for SimPO: the length-normalised margin it optimises)
    chosen_log_ratio: torch.Tensor  # mean log pi(y_w) - log pi_ref(y_w); typically falls in DAAs
    rejected_log_ratio: torch.Tensor  # mean log pi(y_l) - log pi_ref(y_l)

    def diagnostics(self) -> dict[str, float]:
        """The logged numbers as plain floats (the loss included)."""
        return {
            "loss": float(self.loss.detach()),
            "implicit_accuracy": float(self.implicit_accuracy),
            "reward_margin": float(self.reward_margin),
            "chosen_log_ratio": float(self.chosen_log_ratio),
            "rejected_log_ratio": float(self.rejected_log_ratio),
        }


@dataclass(frozen=True)
class PairLogProbs:
    """Summed response log-probs and token counts of a batch of preference pairs, each shape [B]."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    chosen_lengths: torch.Tensor | None = None  # response token counts, needed by rdpo and simpo
    rejected_lengths: torch.Tensor | None = None


def _diagnostics(loss_per_pair: torch.Tensor, margin: torch.Tensor, lp: PairLogProbs) -> ObjectiveOutput:
    chosen_ratio = (lp.policy_chosen - lp.reference_chosen).detach()
    rejected_ratio = (lp.policy_rejected - lp.reference_rejected).detach()
    margin = margin.detach()
    return ObjectiveOutput(
        loss=loss_per_pair.mean(),
        implicit_accuracy=(margin > 0).float().mean(),
        reward_margin=margin.mean(),
        chosen_log_ratio=chosen_ratio.mean(),
        rejected_log_ratio=rejected_ratio.mean(),
    )


def _log_ratio_difference(lp: PairLogProbs) -> torch.Tensor:
    return (lp.policy_chosen - lp.reference_chosen) - (lp.policy_rejected - lp.reference_rejected)


def dpo_loss(lp: PairLogProbs, beta: float) -> ObjectiveOutput:
    """DPO: -log sigmoid(beta * h). logsigmoid keeps the gradient finite at any margin."""
    margin = beta * _log_ratio_difference(lp)
    return _diagnostics(-F.logsigmoid(margin), margin, lp)


def ipo_loss(lp: PairLogProbs, beta: float) -> ObjectiveOutput:
    """IPO in the DAA scaling-law paper's convention: (beta*h - 1)^2, minimised at h = 1/beta.

    The IPO paper's (h - 1/(2*tau))^2 is minimised at h = 1/(2*tau): it is this loss (up to the factor
    beta^2) only when tau = beta/2, so an IPO-paper tau grid is NOT this beta grid. Sequence sums, not
    length-normalised (some libraries length-normalise IPO; the paper does not).
    """
    margin = beta * _log_ratio_difference(lp)
    return _diagnostics((margin - 1.0) ** 2, margin, lp)


def slic_loss(lp: PairLogProbs, beta: float) -> ObjectiveOutput:
    """SLiC-HF hinge: max(0, 1 - beta * h)."""
    margin = beta * _log_ratio_difference(lp)
    return _diagnostics(torch.relu(1.0 - margin), margin, lp)


def cdpo_loss(lp: PairLogProbs, beta: float, label_smoothing: float = 0.1) -> ObjectiveOutput:
    """Conservative DPO: labels flipped with probability eps = label_smoothing."""
    margin = beta * _log_ratio_difference(lp)
    loss = -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return _diagnostics(loss, margin, lp)


def rdpo_loss(lp: PairLogProbs, beta: float, length_alpha: float = 0.01) -> ObjectiveOutput:
    """R-DPO: -log sigmoid(beta*h + length_alpha*(|y_w| - |y_l|)).

    The implied reward of length-penalised RLHF (maximise r - alpha*|y| under the KL constraint) is
    beta*log(pi/pi_ref) + alpha*|y|; its difference over the pair gives the plus sign. When the chosen
    response is longer, part of the preference is already explained by length and the policy is pushed
    less (with a minus sign it would be pushed more: a reward for verbosity).
    """
    chosen_lengths, rejected_lengths = _require_lengths(lp, "rdpo")
    length_gap = (chosen_lengths - rejected_lengths).to(lp.policy_chosen.dtype)
    margin = beta * _log_ratio_difference(lp) + length_alpha * length_gap
    return _diagnostics(-F.logsigmoid(margin), margin, lp)


def simpo_loss(lp: PairLogProbs, beta: float, gamma: float = 0.5) -> ObjectiveOutput:
    """SimPO: -log sigmoid(beta*(avg log pi(y_w) - avg log pi(y_l)) - gamma); no reference model.

    The reported log-ratios still use the reference so that curves stay comparable across objectives.
    """
    chosen_lengths, rejected_lengths = _require_lengths(lp, "simpo")
    chosen_avg = lp.policy_chosen / chosen_lengths.clamp(min=1)
    rejected_avg = lp.policy_rejected / rejected_lengths.clamp(min=1)
    margin = beta * (chosen_avg - rejected_avg) - gamma
    return _diagnostics(-F.logsigmoid(margin), margin, lp)


def _require_lengths(lp: PairLogProbs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen_lengths, rejected_lengths), which objective ``name`` needs."""
    if lp.chosen_lengths is None or lp.rejected_lengths is None:
        raise ValueError(f"objective {name!r} needs chosen_lengths and rejected_lengths (response token counts)")
    return lp.chosen_lengths, lp.rejected_lengths


# name -> (loss function, names of the extra keyword hyper-parameters it accepts)
OBJECTIVES: dict[str, tuple[Callable[..., ObjectiveOutput], tuple[str, ...]]] = {
    "dpo": (dpo_loss, ()),
    "ipo": (ipo_loss, ()),
    "slic": (slic_loss, ()),
    "cdpo": (cdpo_loss, ("label_smoothing",)),
    "rdpo": (rdpo_loss, ("length_alpha",)),
    "simpo": (simpo_loss, ("gamma",)),
}


def validate_objective(name: str, beta: float, **hyperparameters: float) -> None:
    """Fail fast on an unknown objective, a non-positive beta or an unknown hyper-parameter."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid choices: {', '.join(sorted(OBJECTIVES))}")
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"objective {name!r}: beta must be a positive number, got {beta!r}")
    accepted = OBJECTIVES[name][1]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(f"objective {name!r} does not take {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'nothing'}")
    if not 0.0 <= hyperparameters.get("label_smoothing", 0.0) < 0.5:
        raise ValueError("label_smoothing must be in [0, 0.5)")


def compute_objective(
    name: str,
    beta: float,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    **hyperparameters: float,
) -> ObjectiveOutput:
    """Look up objective ``name`` and apply it to a batch; all log-prob tensors have shape [B]."""
    validate_objective(name, beta, **hyperparameters)
    lp = PairLogProbs(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
    )
    loss_fn, _ = OBJECTIVES[name]
    return loss_fn(lp, beta, **hyperparameters)
