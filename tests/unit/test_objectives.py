"""Objectives against hand-computed values, a float64 reference, extreme margins and bad input."""

import math

import pytest
import torch

from overopt.objectives import OBJECTIVES, compute_objective, validate_objective


def _batch(pc, pr, rc, rr, dtype=torch.float32):
    return [torch.tensor(v, dtype=dtype) for v in (pc, pr, rc, rr)]


# One pair with h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2, chosen log-ratio 1, rejected -1.
ONE_PAIR = _batch([-1.0], [-3.0], [-2.0], [-2.0])
LENGTHS = (torch.tensor([4.0]), torch.tensor([2.0]))


@pytest.mark.parametrize(
    "name, beta, extra, expected",
    [
        # h = 2 (see ONE_PAIR); each expected value is worked out by hand in its comment.
        ("dpo", 0.5, {}, math.log1p(math.exp(-1.0))),  # -log sigmoid(0.5*2) = log(1 + e^-1)
        ("ipo", 0.5, {}, 0.0),  # (0.5*2 - 1)^2: h = 2 is exactly the fixed point 1/beta
        ("ipo", 0.25, {}, 0.25),  # (0.25*2 - 1)^2 = (-0.5)^2
        ("ipo", 1.0, {}, 1.0),  # (1*2 - 1)^2
        ("slic", 0.25, {}, 0.5),  # 1 - 0.25*2
        ("slic", 1.0, {}, 0.0),  # hinge inactive once beta*h >= 1
        ("cdpo", 0.5, {"label_smoothing": 0.2}, 0.8 * math.log1p(math.exp(-1.0)) + 0.2 * math.log1p(math.exp(1.0))),
        # margin = 0.5*2 + 0.1*(4 - 2) = 1.2 (a minus sign would give 0.8 and loss 0.371101)
        ("rdpo", 0.5, {"length_alpha": 0.1}, 0.2632825),
        # 2 * (-1/4 - (-3/2)) - 0.5 = 2 * 1.25 - 0.5 = 2.0
        ("simpo", 2.0, {"gamma": 0.5}, math.log1p(math.exp(-2.0))),
    ],
)
def test_hand_computed_values(name, beta, extra, expected):
    out = compute_objective(name, beta, *ONE_PAIR, *LENGTHS, **extra)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    if name != "simpo":
        assert out.chosen_log_ratio.item() == pytest.approx(1.0)
        assert out.rejected_log_ratio.item() == pytest.approx(-1.0)
        assert out.implicit_accuracy.item() == 1.0


def test_ipo_uses_the_daa_papers_beta_not_the_ipo_papers_tau():
    # chosen log-ratio -4 - -5 = +1, rejected -6 - -4 = -2, so h = 3.
    pair = _batch([-4.0], [-6.0], [-5.0], [-4.0])
    # DAA paper: (0.1*3 - 1)^2 = 0.49. The IPO paper's (h - 1/(2*0.1))^2 would be (3 - 5)^2 = 4.
    assert compute_objective("ipo", 0.1, *pair).loss.item() == pytest.approx(0.49, rel=1e-6)
    # Fixed point h = 1/beta: at beta = 1/3 the loss and its gradient are zero.
    pc = torch.tensor([-4.0], requires_grad=True)
    out = compute_objective("ipo", 1 / 3, pc, *pair[1:])
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-6)
    assert out.reward_margin.item() == pytest.approx(1.0)  # beta*h at the fixed point


def test_rdpo_length_gap_enters_with_a_plus_sign():
    # Same pair (h = 2, beta*h = 1), chosen 4 tokens vs rejected 2: the longer chosen answer already
    # explains part of the preference, so R-DPO's loss is below DPO's and its push is weaker.
    pc = torch.tensor([-1.0], requires_grad=True)
    rest = ONE_PAIR[1:]
    out = compute_objective("rdpo", 0.5, pc, *rest, *LENGTHS, length_alpha=0.1)
    out.loss.backward()
    assert out.reward_margin.item() == pytest.approx(1.2)  # 1 + 0.1 * (4 - 2)
    assert out.loss.item() < compute_objective("dpo", 0.5, *ONE_PAIR).loss.item()
    # d loss / d pc = -beta * sigmoid(-1.2) = -0.5 / (1 + e^1.2) = -0.1157376
    assert pc.grad.item() == pytest.approx(-0.1157376, rel=1e-5)
    # Swapping the lengths (chosen shorter) gives margin 1 - 0.2 = 0.8: loss log(1 + e^-0.8) = 0.3711007.
    swapped = compute_objective("rdpo", 0.5, *ONE_PAIR, *reversed(LENGTHS), length_alpha=0.1)
    assert swapped.loss.item() == pytest.approx(0.3711007, rel=1e-6)


def _float64_reference(name, beta, pc, pr, rc, rr, lc, lr):
    """Straight-line float64 maths for each objective, one pair at a time."""
    losses = []
    for i in range(len(pc)):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        if name == "dpo":
            loss = math.log1p(math.exp(-beta * h))
        elif name == "ipo":
            loss = (beta * h - 1) ** 2
        elif name == "slic":
            loss = max(0.0, 1 - beta * h)
        elif name == "cdpo":
            loss = 0.9 * math.log1p(math.exp(-beta * h)) + 0.1 * math.log1p(math.exp(beta * h))
        elif name == "rdpo":
            loss = math.log1p(math.exp(-(beta * h + 0.01 * (lc[i] - lr[i]))))
        elif name == "simpo":
            loss = math.log1p(math.exp(-(beta * (pc[i] / lc[i] - pr[i] / lr[i]) - 0.5)))
        losses.append(loss)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("beta", [0.03, 0.1, 1.0])
def test_matches_float64_reference_on_random_inputs(name, beta):
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-(torch.rand(64, generator=gen, dtype=torch.float64) * 30) for _ in range(4))
    lc = torch.randint(1, 14, (64,), generator=gen).double()
    lr = torch.randint(1, 14, (64,), generator=gen).double()
    expected = _float64_reference(name, beta, *(t.tolist() for t in (pc, pr, rc, rr, lc, lr)))
    out = compute_objective(name, beta, pc.float(), pr.float(), rc.float(), rr.float(), lc, lr)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradients_finite_at_extreme_margins(name, sign):
    # |beta * h| = 100 with beta = 1: log-ratios of +-50 on each side.
    pc = torch.tensor([sign * 50.0], requires_grad=True)
    pr = torch.tensor([-sign * 50.0], requires_grad=True)
    ref = torch.zeros(1)
    out = compute_objective(name, 1.0, pc, pr, ref, ref, torch.tensor([1.0]), torch.tensor([1.0]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    ref = torch.tensor([-5.0])
    compute_objective("dpo", 0.1, pc, pr, ref, ref).loss.backward()
    # d/dpc of -log sigmoid(beta*h) at h=0 is -beta/2.
    assert pc.grad.item() == pytest.approx(-0.05)
    assert pr.grad.item() == pytest.approx(0.05)


def test_unknown_objective_lists_valid_choices():
    with pytest.raises(ValueError, match="valid choices: cdpo, dpo, ipo, rdpo, simpo, slic"):
        compute_objective("ppo", 0.1, *ONE_PAIR)


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_non_positive_beta_is_an_error(beta):
    with pytest.raises(ValueError, match="beta must be a positive number"):
        compute_objective("dpo", beta, *ONE_PAIR)


def test_unknown_hyperparameter_and_missing_lengths_are_errors():
    with pytest.raises(ValueError, match="does not take gamma"):
        validate_objective("dpo", 0.1, gamma=0.5)
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        compute_objective("simpo", 0.1, *ONE_PAIR)
