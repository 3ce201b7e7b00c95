"""Training-step maths and checkpoint scoring on a tiny model, without Ray."""

import numpy as np
import pytest
import torch

from overopt.data.synthetic import Labeller, demonstration_sampler, make_preference_pairs
from overopt.data.tokenize import tokenize_table
from overopt.evaluate.generation import HFGenerator
from overopt.evaluate.judges import GoldJudge
from overopt.evaluate.scoring import models_scorer, score_samples, summarize
from overopt.logprobs import pack_prompt_response, pair_logprobs, sequence_logprobs
from overopt.objectives import compute_objective
from overopt.train.steps import preference_loss, sft_loss


@pytest.fixture(scope="module")
def pair_batch(task, tokenizer, tiny_model):
    rows, _ = make_preference_pairs(task.prompts(8, seed=0), demonstration_sampler(task, 0), Labeller(task), seed=0)
    batch, _ = tokenize_table("pairs", rows, tokenizer)
    with torch.no_grad():
        logps, _, n = pair_logprobs(tiny_model, batch, tokenizer.pad_token_id)
    batch["reference_chosen_logps"], batch["reference_rejected_logps"] = logps[:n].numpy(), logps[n:].numpy()
    return batch


def test_preference_loss_equals_the_objective_on_separate_log_probs(tiny_model, tokenizer, pair_batch):
    out = preference_loss(tiny_model, pair_batch, tokenizer.pad_token_id, "dpo", 0.1)
    # At the reference the policy's log-ratios are exactly zero: loss log 2, accuracy 0.
    assert out.loss.item() == pytest.approx(np.log(2), abs=1e-5)
    assert out.chosen_log_ratio.item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        chosen, _ = sequence_logprobs(tiny_model, **pack_prompt_response(pair_batch["prompt_ids"], pair_batch["chosen_ids"], 0))
        rejected, _ = sequence_logprobs(tiny_model, **pack_prompt_response(pair_batch["prompt_ids"], pair_batch["rejected_ids"], 0))
    expected = compute_objective("ipo", 0.3, chosen + 1.0, rejected, chosen, rejected)
    shifted = dict(pair_batch, reference_chosen_logps=pair_batch["reference_chosen_logps"] - 1.0)
    assert preference_loss(tiny_model, shifted, 0, "ipo", 0.3).loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)


def test_a_few_dpo_steps_raise_the_margin(task, tokenizer, pair_batch):
    from overopt.models import load_model

    model = load_model("tiny", vocab_size=len(tokenizer), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(10):
        out = preference_loss(model, pair_batch, tokenizer.pad_token_id, "dpo", 0.1)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.implicit_accuracy.item() == 1.0 and out.reward_margin.item() > 0


def test_sft_loss_is_the_mean_response_nll(task, tokenizer, tiny_model):
    rows = [{"prompt": d["prompt"], "completion": d["response"]} for d in task.demonstrations(4, seed=0)]
    batch, _ = tokenize_table("sft", rows, tokenizer)
    with torch.no_grad():
        logps, counts = sequence_logprobs(tiny_model, **pack_prompt_response(batch["prompt_ids"], batch["response_ids"], 0))
        assert sft_loss(tiny_model, batch, 0).item() == pytest.approx((-logps.sum() / counts.sum()).item(), rel=1e-5)


def test_generation_samples_end_with_eos_or_are_marked_truncated(task, tokenizer, tiny_model):
    prompts = [tokenizer(p)["input_ids"] for p in task.prompts(16, seed=1)]
    samples = HFGenerator(max_new_tokens=5).generate(tiny_model, tokenizer, prompts, seed=0)
    assert len(samples) == 16
    for s in samples:
        assert s.finished == (s.response_ids[-1] == tokenizer.eos_token_id)
        assert len(s.response_ids) <= 5 and tokenizer.eos_token_id not in s.response_ids[:-1]
    again = HFGenerator(max_new_tokens=5).generate(tiny_model, tokenizer, prompts, seed=0)
    assert [s.response_ids for s in again] == [s.response_ids for s in samples]  # seeded


def test_scoring_the_reference_against_itself(task, tokenizer, tiny_model):
    prompts = task.prompts(64, seed=2)
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    scorer = models_scorer(tiny_model, tiny_model, tokenizer.pad_token_id)
    records = score_samples(
        tiny_model,
        scorer,
        tokenizer,
        HFGenerator(),
        GoldJudge(task),
        prompt_ids,
        prompts,
        [task.ideal_response(p) for p in prompts],
        [True] * 64,
        seed=0,
    )
    row = summarize(records)
    assert row["kl"] == 0.0 and row["kl_se"] == 0.0 and row["d"] == 0.0  # policy == reference exactly
    assert row["win_rate"] < 0.1  # an untrained model never beats the ideal response
    assert row["judged"] == 64 and row["invalid_judgements"] == 0


def test_hub_generation_configs_cannot_change_the_sampling(task, tokenizer, tiny_model):
    """A hub model may ship a generation_config with penalties, top-k or forced tokens: ignored."""
    from transformers import GenerationConfig

    prompts = [tokenizer(p)["input_ids"] for p in task.prompts(32, seed=3)]
    plain = HFGenerator(max_new_tokens=8).generate(tiny_model, tokenizer, prompts, seed=1)
    shipped = tiny_model.generation_config
    tiny_model.generation_config = GenerationConfig(
        top_k=2, top_p=0.5, repetition_penalty=3.0, no_repeat_ngram_size=1, min_new_tokens=4, suppress_tokens=[5, 6], temperature=0.3
    )
    try:
        again = HFGenerator(max_new_tokens=8).generate(tiny_model, tokenizer, prompts, seed=1)
    finally:
        tiny_model.generation_config = shipped
    assert [s.response_ids for s in again] == [s.response_ids for s in plain]


def test_a_non_finite_loss_or_gradient_names_the_step_and_the_diagnostics():
    from overopt.train.steps import NonFiniteTraining, check_finite

    check_finite(3, {"loss": 0.69, "grad_norm": 0.0, "chosen_log_ratio": -1.0})  # finite, a zero norm included
    with pytest.raises(NonFiniteTraining, match=r"step 7: loss not finite \(loss nan, chosen_log_ratio -2\.5\)"):
        check_finite(7, {"loss": float("nan"), "chosen_log_ratio": -2.5})
    with pytest.raises(NonFiniteTraining, match=r"step 9: grad_norm not finite .*grad_norm inf"):
        check_finite(9, {"loss": 0.5, "grad_norm": float("inf")})
