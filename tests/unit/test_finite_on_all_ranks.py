"""A loss that is not finite on one rank stops every rank, with one message: a rank that raised alone
would leave the others waiting in the next ZeRO-3 collective. Two real gloo processes on 127.0.0.1."""

import json
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from overopt.train.steps import NonFiniteTraining, check_finite_on_all_ranks


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, nan_on_rank: int | None) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loss = float("nan") if rank == nan_on_rank else 0.69 + rank
        outcome = {"raised": None}
        try:
            check_finite_on_all_ranks(7, {"loss": loss, "chosen_log_ratio": -2.5 * (rank + 1)})
        except NonFiniteTraining as error:
            outcome["raised"] = str(error)
        dist.barrier()  # every rank reaches this after the check: none is left waiting in a collective
        with open(f"{out}.{rank}", "w") as file:
            json.dump(outcome, file)
    finally:
        dist.destroy_process_group()


def _run(tmp_path, nan_on_rank):
    out = str(tmp_path / f"out-{nan_on_rank}")
    mp.spawn(_rank, args=(2, _free_port(), out, nan_on_rank), nprocs=2, join=True)
    return [json.loads(open(f"{out}.{rank}").read())["raised"] for rank in (0, 1)]


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_message(tmp_path):
    on_rank_0, on_rank_1 = _run(tmp_path, nan_on_rank=1)
    assert on_rank_0 == on_rank_1 == "step 7: loss not finite on rank 1 (loss nan, chosen_log_ratio -5)"


def test_finite_values_on_every_rank_stop_none(tmp_path):
    assert _run(tmp_path, nan_on_rank=None) == [None, None]


def test_without_a_process_group_it_is_the_single_process_check():
    assert not dist.is_initialized()
    check_finite_on_all_ranks(3, {"loss": 0.5})
    with pytest.raises(NonFiniteTraining) as raised:
        check_finite_on_all_ranks(3, {"loss": float("inf")})
    assert str(raised.value) == "step 3: loss not finite (loss inf)"
