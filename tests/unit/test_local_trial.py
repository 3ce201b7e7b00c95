"""The one-process trial (overopt.local_trial) and the pieces it shares with sweep trials."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from overopt.config import EvaluationConfig, TrainConfig
from overopt.data.synthetic import Labeller, demonstration_sampler, make_preference_pairs
from overopt.data.tokenize import tokenize_table
from overopt.evaluate.judges import GoldJudge
from overopt.local_trial import LocalTrial, run_local_trial
from overopt.logprobs import pair_logprobs
from overopt.train.steps import optimizer_and_schedule


def test_the_warm_up_rises_linearly_to_the_rate_and_stays():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = optimizer_and_schedule([parameter], "rmsprop", lr=0.4, warmup_steps=3)
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        parameter.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    # step k (0-based) trains at lr * (k + 1) / (warmup + 1): 0.1, 0.2, 0.3, then 0.4 from the 4th step on
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert isinstance(optimizer, torch.optim.RMSprop)


def test_response_errors_count_missing_junk_and_repeated_words(task):
    prompt = next(p for p in task.prompts(50, seed=3) if len(task.ideal_response(p).split()) >= 3)
    ideal = task.ideal_response(prompt).split()
    junk = task.filler_words[0]
    assert task.response_errors(prompt, " ".join(ideal)) == {"missing": 0, "junk": 0, "repeats": 0, "length_gap": 0}
    response = " ".join([ideal[0], junk, junk] + ideal[2:])  # drops ideal[1], adds the same junk word twice
    assert task.response_errors(prompt, response) == {"missing": 1, "junk": 2, "repeats": 1, "length_gap": 1}


@pytest.fixture(scope="module")
def saved_reference(tmp_path_factory, tokenizer, tiny_model, task):
    directory = tmp_path_factory.mktemp("reference")
    tiny_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    rows, _ = make_preference_pairs(task.prompts(96, seed=0), demonstration_sampler(task, 0), Labeller(task), seed=0)
    batch, _ = tokenize_table("pairs", rows, tokenizer)
    with torch.no_grad():
        logps, _, n = pair_logprobs(tiny_model, batch, tokenizer.pad_token_id)
    pairs = pa.table(
        {
            **{k: batch[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")},
            "reference_chosen_logps": logps[:n].numpy(),
            "reference_rejected_logps": logps[n:].numpy(),
        }
    )
    prompts = task.prompts(64, seed=9)
    eval_set = pa.table(
        {
            "prompt": prompts,
            "prompt_ids": [tokenizer(p)["input_ids"] for p in prompts],
            "reference_response": [task.ideal_response(p) for p in prompts],
            "reference_finished": [True] * len(prompts),
        }
    )
    return str(directory), pairs, eval_set


def test_a_local_trial_evaluates_at_the_schedule_and_starts_at_the_reference(saved_reference, task):
    directory, pairs, eval_set = saved_reference
    train = TrainConfig(objectives=["dpo"], betas={"dpo": [0.1]}, batch_size=32, epochs=2, lr=1e-3, warmup_steps=1, num_workers=1)
    rows = run_local_trial(
        LocalTrial("dpo", 0.1, "tiny", 0),
        train,
        EvaluationConfig(),
        [0.0, 1 / 3, 1.0, 2.0],
        directory,
        directory,
        pairs,
        eval_set,
        GoldJudge(task),
        task=task,
        log=lambda _: None,
    )
    # 96 pairs / 32 = 3 steps per epoch; 2 epochs = 6 steps; fractions 1/3, 1, 2 -> steps 1, 3, 6
    assert [r["step"] for r in rows] == [0, 1, 3, 6]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and np.isnan(rows[0]["loss"])
    assert rows[1]["loss"] == pytest.approx(np.log(2), abs=1e-5)  # the first step's loss is at the reference
    assert rows[-1]["kl"] > 0.0
    for row in rows:  # the KL estimate's two parts add up to it; the breakdown is in the task's words
        assert row["kl_eos"] + row["kl_words"] == pytest.approx(row["kl"], abs=1e-4)
        assert {"mean_missing", "mean_junk", "mean_repeats", "mean_length_gap"} <= set(row)
    assert rows[0]["win_rate"] < 0.5  # a random tiny model against ideal answers


def _loop(pairs, engine=None, **kwargs):
    from overopt.train.loop import AlignmentLoop

    return AlignmentLoop(
        engine, pairs, objective="dpo", beta=0.1, batch_size=32, pad_token_id=0, **{"experiment_seed": 0, "trial_seed": 0, **kwargs}
    )


def test_the_loop_draws_each_epoch_afresh_and_splits_each_batch_across_ranks(saved_reference):
    _, pairs, _ = saved_reference  # 96 pairs: 3 batches of 32 per epoch
    loop = _loop(pairs)
    firsts = []
    for _epoch in range(3):
        batches = []
        for _ in range(3):
            batches.append(loop.next_batch()["chosen_ids"])
            loop.batch_in_epoch += 1  # what train_step does after its step
        assert sorted(map(tuple, sum(batches, []))) == sorted(map(tuple, pairs.column("chosen_ids").to_pylist()))  # each pair once an epoch
        firsts.append(batches[0])
    assert firsts[0] != firsts[1] != firsts[2]  # a new permutation every epoch
    assert _loop(pairs, trial_seed=1).next_batch()["chosen_ids"] != firsts[0]  # another trial seed, another order
    halves = [_loop(pairs, rank=rank, world=2).next_batch() for rank in (0, 1)]
    assert halves[0]["chosen_ids"] + halves[1]["chosen_ids"] == firsts[0]  # two ranks train on the one-process batch
    assert (
        np.concatenate([h["reference_chosen_logps"] for h in halves]).tolist()
        == _loop(pairs).next_batch()["reference_chosen_logps"].tolist()
    )


def test_a_restored_loop_continues_the_same_permutation_at_the_same_batch(saved_reference):
    from overopt.models import load_model
    from overopt.train.loop import PlainEngine

    directory, pairs, _ = saved_reference
    torch.manual_seed(0)
    model = load_model(directory)
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), "rmsprop", lr=1e-3, warmup_steps=0)
    running = _loop(pairs, PlainEngine(model, optimizer, scheduler, 1.0))
    for _ in range(4):  # into the second epoch
        running.train_step()
    state = running.state_dict()
    restored = _loop(pairs, PlainEngine(model, optimizer, scheduler, 1.0))
    restored.load_state_dict(state)
    assert (restored.step, restored.epoch, restored.batch_in_epoch) == (4, 1, 1)
    for _ in range(4):  # across the next epoch boundary too
        expected = running.next_batch()
        assert restored.next_batch()["chosen_ids"] == expected["chosen_ids"]
        running.batch_in_epoch += 1
        restored.batch_in_epoch += 1
    interval = restored.take_interval()  # the restored sums: the 4 steps trained before the save
    assert np.isfinite(interval["loss"]) and interval["tokens"] > 0
