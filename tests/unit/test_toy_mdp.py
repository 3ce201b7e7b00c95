"""The toy MDP: mass outside the preference data grows with training and as beta shrinks; two DPO minimisers."""

import json
import math

import pytest

from overopt.analysis.toy_mdp import (
    PAIRS,
    TreeMDP,
    in_data_mask,
    reference_weights,
    run_toy_mdp,
    three_response_example,
    write_toy_mdp,
)


@pytest.fixture(scope="module")
def numbers():
    return run_toy_mdp()


def _final(numbers, parametrisation, objective):
    runs = [r for r in numbers["runs"] if r["parametrisation"] == parametrisation and r["objective"] == objective]
    return {r["beta"]: r for r in runs}


def test_tree_has_every_trajectory_once_and_probabilities_sum_to_one():
    mdp = TreeMDP.build(("a", "b"), 3)
    assert len(mdp.trajectories) == 1 + 2 + 4 + 8 and len(mdp.states) == 1 + 2 + 4
    for parametrisation in ("shared", "tabular"):
        probabilities = mdp.log_probs(mdp.features(parametrisation) @ reference_weights(mdp, parametrisation)).exp()
        assert probabilities.sum().item() == pytest.approx(1.0)
    # by hand: uniform logits -> the empty answer is EOS at the root (1/3); 'ab' is a, b, EOS (1/27);
    # 'aba' is a, b, a with the end forced at max length (1/27)
    import torch

    uniform = mdp.log_probs(torch.zeros(len(mdp.states), len(mdp.actions), dtype=torch.float64)).exp()
    assert uniform[mdp.index("")].item() == pytest.approx(1 / 3)
    assert uniform[mdp.index("ab")].item() == pytest.approx(1 / 27)
    assert uniform[mdp.index("aba")].item() == pytest.approx(1 / 27)
    assert in_data_mask(mdp, PAIRS).sum().item() == 4  # the preference data mention 4 of 15 trajectories


@pytest.mark.parametrize("objective", ["dpo", "ipo", "slic"])
def test_mass_outside_the_data_grows_with_training_and_as_beta_shrinks(numbers, objective):
    runs = _final(numbers, "shared", objective)
    start = numbers["reference"]["shared"]["outside_mass"]
    assert all(r["outside_mass"][0] == pytest.approx(start) for r in runs.values())
    small, middle, large = (runs[b]["final_outside_mass"] for b in (0.01, 0.1, 0.5))
    assert small > start + 0.5  # beta 0.01: nearly all mass leaves the data
    assert small >= middle - 1e-6 >= large - 2e-6  # smaller beta, more mass outside
    assert small > large + 0.04
    # with training: at beta 0.01 the outside mass grows over the run (its last value is near its max)
    curve = runs[0.01]["outside_mass"]
    assert curve[-1] > curve[len(curve) // 4] > curve[0]


def test_a_tabular_policy_moves_mass_onto_the_data_instead(numbers):
    # the contrast that shows the leak is a generalisation effect
    start = numbers["reference"]["tabular"]["outside_mass"]
    for objective in ("dpo", "ipo", "slic"):
        for run in _final(numbers, "tabular", objective).values():
            assert run["final_outside_mass"] < start


def test_three_response_example_two_different_policies_with_the_same_minimal_loss():
    example = three_response_example(beta=0.5)
    # y1 > y2 three times, y2 > y1 once: minimum at beta*h = log 3, loss -(3/4)ln(3/4) - (1/4)ln(1/4)
    assert example["minimal_loss"] == pytest.approx(0.5623351446, rel=1e-9)
    assert example["beta_h_at_minimum"] == pytest.approx(math.log(3))
    for part in ("constructed", "trained"):
        policies = list(example[part].values())
        assert len(policies) == 2
        for policy in policies:
            assert policy["loss"] == pytest.approx(example["minimal_loss"], abs=1e-9)
            assert sum(policy["policy"]) == pytest.approx(1.0)
        assert policies[0]["loss"] == pytest.approx(policies[1]["loss"], abs=1e-9)
        # ... and they differ: mostly in y3, which no preference mentions
        assert example[f"{part}_total_variation"] > 0.5
        assert abs(policies[0]["policy"][2] - policies[1]["policy"][2]) > 0.5


def test_write_toy_mdp_writes_json_and_figure(tmp_path, numbers, monkeypatch):
    import overopt.analysis.toy_mdp as toy

    monkeypatch.setattr(toy, "run_toy_mdp", lambda **kwargs: numbers)  # the numbers are tested above
    json_path, figure = write_toy_mdp(tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["in_data"] == ["aa", "ab", "ba", "bb"]
    assert len(data["runs"]) == 2 * 3 * 3
    assert figure.name == "toy_mdp.png" and figure.stat().st_size > 10_000
