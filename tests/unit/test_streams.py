"""Random streams (overopt/streams.py): a seed is a real seed, and no two streams of a sweep collide."""

import itertools

import numpy as np
import pytest

from overopt.streams import SFT_ORDER, batch_rows, block_seed, epoch_order, evaluation_seed, trial_key


def test_every_epoch_and_every_trial_seed_draws_its_own_order():
    first = epoch_order(4000, experiment_seed=0, trial_seed=0, epoch=0)
    assert sorted(first.tolist()) == list(range(4000))  # a permutation of the rows
    assert np.array_equal(first, epoch_order(4000, 0, 0, 0))  # the same seed: the same order
    for other in (
        epoch_order(4000, 0, 0, 1),
        epoch_order(4000, 0, 1, 0),
        epoch_order(4000, 1, 0, 0),
        epoch_order(4000, 0, 0, 0, SFT_ORDER),
    ):
        assert not np.array_equal(first, other)
        # Independent orders, not shifted copies: the first batch of one shares ~1/125 of its rows with the other's.
        assert len(set(first[:32]) & set(other[:32])) < 8


def test_the_ranks_shares_make_up_the_single_process_batch():
    order = epoch_order(100, 0, 0, 0)
    whole = batch_rows(order, batch_size=32, batch_index=2)
    shares = [batch_rows(order, 32, 2, rank, 4) for rank in range(4)]
    assert np.array_equal(np.concatenate(shares), whole)
    assert np.array_equal(whole, order[64:96])
    with pytest.raises(ValueError, match="does not split evenly"):
        batch_rows(order, 32, 0, 0, 3)
    with pytest.raises(IndexError):
        batch_rows(order, 32, 3)  # 100 rows hold 3 whole batches of 32


def test_evaluation_streams_are_distinct_across_a_grid_larger_than_the_papers():
    """The paper: 3 objectives x 7 betas x 3 sizes, ~8 evaluations each; here 4 seeds, 40 steps and 8
    blocks of prompts per evaluation as well, under 3 experiment seeds: 1.6 M seeds, all different."""
    betas = [0.01, 0.03, 0.05, 0.1, 0.3, 0.5, 1.0]
    trials = [
        trial_key(o, b, s, seed) for o, b, s, seed in itertools.product(["dpo", "ipo", "slic"], betas, ["1b", "2.8b", "6.9b"], range(4))
    ]
    streams = [evaluation_seed(experiment, trial, step) for experiment in range(3) for trial in trials for step in range(0, 400, 10)]
    assert len(set(streams)) == len(streams) == 3 * len(trials) * 40
    assert all(0 <= s < 2**63 for s in streams)  # fits torch.manual_seed and vLLM's per-request seed
    blocks = {block_seed(stream, index) for stream in streams[:20_000] for index in range(0, 512, 64)}
    assert len(blocks) == 20_000 * 8


def test_a_trial_is_named_by_its_grid_point():
    assert trial_key("dpo", 0.1, "tiny", 0) == trial_key("dpo", 0.1000, "tiny", 0)
    assert trial_key("dpo", 0.1, "tiny", 0) != trial_key("dpo", 0.1, "tiny", 1)
    assert evaluation_seed(0, trial_key("dpo", 0.1, "tiny", 0), 5) != evaluation_seed(0, trial_key("dpo", 0.1, "tiny", 0), 6)
