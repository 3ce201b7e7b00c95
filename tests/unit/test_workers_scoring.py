"""Scoring evaluation samples on the training workers (evaluation.scoring: training_workers): every
rank scores a share of the sequences and rank 0 returns them all, in order, equal to scoring with the
whole models. Two real gloo processes; the models are plain modules here (the sweep's are ZeRO-3
engines: tests/integration/test_async_evaluation.py)."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from overopt.evaluate.scoring import models_scorer
from overopt.models import load_model

PROMPTS = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [5], [4, 4, 4, 4, 4]]
RESPONSES = [[12, 13], [14], [15, 16, 17], [18, 19, 20, 21], [22]]


def _models(vocab_size: int):
    policy = load_model("tiny", vocab_size=vocab_size, seed=0).eval()
    reference = load_model("tiny", vocab_size=vocab_size, seed=1).eval()
    return policy, reference


def _rank(rank: int, world: int, init_file: str, out: str, vocab_size: int) -> None:
    from overopt.train.worker import score_on_workers

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        policy, reference = _models(vocab_size)
        forwards = {"n": 0}
        policy.register_forward_hook(lambda *_: forwards.__setitem__("n", forwards["n"] + 1))
        scores = score_on_workers(policy, reference, PROMPTS, RESPONSES, pad_token_id=0, chunk_size=2)
        with open(f"{out}.{rank}", "w") as file:
            json.dump({"scores": scores, "forwards": forwards["n"]}, file)
    finally:
        dist.destroy_process_group()


def test_every_rank_scores_a_share_and_rank_0_returns_all_in_order(tmp_path, tokenizer):
    vocab_size = len(tokenizer)
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "out"), vocab_size), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1))
    assert rank1["scores"] is None and rank0["scores"]["ranks"] == 2
    # 5 sequences: shares of 3 and 2 (padded to 3), 2 per pass: both ranks made the same passes
    # (ZeRO-3 would hang otherwise).
    assert rank0["forwards"] == rank1["forwards"] == 2
    policy, reference = _models(vocab_size)
    expected_policy, expected_reference, expected_lengths = models_scorer(policy, reference, 0, 64)(PROMPTS, RESPONSES)
    scores = rank0["scores"]
    assert scores["lengths"] == [len(r) for r in RESPONSES] == expected_lengths.tolist()
    assert torch.allclose(torch.tensor(scores["policy_logps"], dtype=torch.float64), torch.from_numpy(expected_policy), atol=1e-5)
    assert torch.allclose(torch.tensor(scores["reference_logps"], dtype=torch.float64), torch.from_numpy(expected_reference), atol=1e-5)
    assert not torch.allclose(torch.tensor(scores["policy_logps"]), torch.tensor(scores["reference_logps"]))  # two models, not one
