"""Micro-batches with gradient accumulation, and gradient checkpointing, in one process: one optimizer
step of the alignment loop and of SFT gives the loss and the updated weights of the whole batch in
one pass; a micro-batch that does not divide a worker's share is a config error naming both keys."""

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from overopt.config import ConfigError, load_config
from overopt.data.synthetic import Labeller, demonstration_sampler, make_preference_pairs
from overopt.data.tokenize import tokenize_table
from overopt.logprobs import pair_logprobs
from overopt.train.loop import AlignmentLoop, PlainEngine, enable_gradient_checkpointing, micro_batches, sft_step

BATCH = 32  # pairs per optimizer step
LR = 0.5  # plain SGD: the update is the (clipped) gradient itself, so equal weights mean equal gradients
MAX_GRAD_NORM = 1.0


@pytest.fixture(scope="module")
def pairs(task, tokenizer, tiny_model):
    """96 pairs; the cached reference log-probs are the tiny model's own plus seeded noise, so that
    every pair's loss differs (at the reference itself each would be log 2)."""
    rows, _ = make_preference_pairs(task.prompts(96, seed=0), demonstration_sampler(task, 0), Labeller(task), seed=0)
    batch, _ = tokenize_table("pairs", rows, tokenizer)
    with torch.no_grad():
        logps, _, n = pair_logprobs(tiny_model, batch, tokenizer.pad_token_id)
    noise = np.random.default_rng(0).normal(0.0, 2.0, size=2 * n)
    return pa.table(
        {
            **{k: batch[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")},
            "reference_chosen_logps": logps[:n].numpy() + noise[:n],
            "reference_rejected_logps": logps[n:].numpy() + noise[n:],
        }
    )


def _engine(tiny_model, accumulation_steps: int, checkpointing: bool, max_grad_norm: float = MAX_GRAD_NORM) -> PlainEngine:
    model = copy.deepcopy(tiny_model).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return PlainEngine(model, optimizer, scheduler, max_grad_norm, accumulation_steps)


def _checkpointed_layers(model) -> int:
    return sum(1 for layer in model.gpt_neox.layers if layer.gradient_checkpointing)  # the tiny model's 2 layers


def _one_alignment_step(tiny_model, tokenizer, pairs, micro_batch_size: int | None, checkpointing: bool = False):
    accumulation = BATCH // (micro_batch_size or BATCH)
    engine = _engine(tiny_model, accumulation, checkpointing)
    seen = []  # what each forward pass trained on, in order
    loop = AlignmentLoop(
        engine,
        pairs,
        objective="dpo",
        beta=0.5,
        batch_size=BATCH,
        pad_token_id=tokenizer.pad_token_id,
        experiment_seed=0,
        trial_seed=0,
        micro_batch_size=micro_batch_size,
        prepare_batch=lambda part: seen.append(part["chosen_ids"]) or part,
    )
    values = loop.train_step()
    return values, {name: p.detach().clone() for name, p in engine.module.named_parameters()}, engine, seen


@pytest.mark.parametrize("micro_batch_size, checkpointing", [(8, False), (32, True), (8, True)])
def test_one_step_with_micro_batches_or_checkpointing_is_the_whole_batch_step(
    tiny_model, tokenizer, pairs, micro_batch_size, checkpointing
):
    whole, whole_weights, whole_engine, whole_seen = _one_alignment_step(tiny_model, tokenizer, pairs, None)
    values, weights, engine, seen = _one_alignment_step(tiny_model, tokenizer, pairs, micro_batch_size, checkpointing)
    assert _checkpointed_layers(engine.module) == (2 if checkpointing else 0) and _checkpointed_layers(whole_engine.module) == 0
    assert len(seen) == BATCH // micro_batch_size and [ids for part in seen for ids in part] == whole_seen[0]  # the same pairs, in order
    assert engine.micro_steps == len(seen) and engine.scheduler.last_epoch == 1  # one optimizer step
    for name in ("loss", "implicit_accuracy", "reward_margin", "chosen_log_ratio", "rejected_log_ratio", "grad_norm"):
        assert values[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-6), name
    assert whole["grad_norm"] > MAX_GRAD_NORM  # the clipping applied to the accumulated gradient: a real part of the check
    initial = dict(tiny_model.named_parameters())
    assert all(not torch.equal(whole_weights[name], initial[name]) for name in weights)  # the step moved every tensor
    for name, weight in weights.items():
        torch.testing.assert_close(weight, whole_weights[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_loop_refuses_an_engine_that_accumulates_another_number_of_micro_batches(tiny_model, tokenizer, pairs):
    loop = AlignmentLoop(
        _engine(tiny_model, 1, False),
        pairs,
        objective="dpo",
        beta=0.5,
        batch_size=BATCH,
        pad_token_id=0,
        experiment_seed=0,
        trial_seed=0,
        micro_batch_size=8,
    )
    with pytest.raises(ValueError, match="accumulates 1 micro-batches per step, but each step here has 4"):
        loop.train_step()
    with pytest.raises(ValueError, match="micro-batches of 5 pairs do not divide this rank's 16 pairs"):
        AlignmentLoop(
            None,
            pairs,
            objective="dpo",
            beta=0.5,
            batch_size=BATCH,
            pad_token_id=0,
            experiment_seed=0,
            trial_seed=0,
            rank=1,
            world=2,
            micro_batch_size=5,
        )


def test_one_sft_step_with_micro_batches_weights_each_by_its_tokens(task, tokenizer, tiny_model):
    rows = [{"prompt": d["prompt"], "completion": d["response"]} for d in task.demonstrations(16, seed=0)]
    share, _ = tokenize_table("sft", rows, tokenizer)
    share = {name: share[name] for name in ("prompt_ids", "response_ids")}
    lengths = [len(r) for part in micro_batches(share, 4) for r in part["response_ids"]]
    assert len(set(lengths)) > 1  # micro-batches of unequal token counts: their plain mean would not be the share's loss
    results = []
    for micro, checkpointing in ((16, False), (4, False), (4, True)):
        engine = _engine(tiny_model, 16 // micro, checkpointing, max_grad_norm=1e9)  # unclipped: a wrong scale would show
        loss = sft_step(engine, share, tokenizer.pad_token_id, micro)
        results.append((loss, {name: p.detach().clone() for name, p in engine.module.named_parameters()}))
    (whole_loss, whole_weights), *others = results
    for loss, weights in others:
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        for name, weight in weights.items():
            torch.testing.assert_close(weight, whole_weights[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_micro_batch_that_does_not_divide_a_workers_share_names_both_keys():
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["train.batch_size=128", "train.num_workers=4", "train.micro_batch_size=12"])
    message = str(refused.value)
    assert "train.micro_batch_size=12" in message and "train.batch_size=128" in message and "train.num_workers=4 (32 pairs)" in message
    with pytest.raises(ConfigError, match=r"sft.micro_batch_size=3 must divide .*sft.batch_size=64"):
        load_config(None, ["sft.batch_size=64", "sft.num_workers=2", "sft.micro_batch_size=3"])
    cfg = load_config(
        None, ["train.batch_size=128", "train.num_workers=4", "train.micro_batch_size=8", "train.gradient_checkpointing=true"]
    )
    assert (cfg.train.micro_batch_size, cfg.train.gradient_checkpointing) == (8, True)
    assert (cfg.sft.micro_batch_size, cfg.sft.gradient_checkpointing) == (None, False)  # unset: the whole share in one pass
