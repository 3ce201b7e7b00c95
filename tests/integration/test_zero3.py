"""DeepSpeed ZeRO-3 across 2 Ray Train workers on CPU: parameters really shard, the consolidated
Hugging Face checkpoint reloads with from_pretrained and gives the engine's log-probs, and loading it
under ZeRO-3 partitioning (as trial workers do) shards it from the start with the same weights. And on
2 gloo processes: an optimizer step in micro-batches with gradient accumulation, with and without
gradient checkpointing, is the whole batch's step."""

import json
import sys

import pytest
import ray.cloudpickle

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


def _zero3_worker(config):
    import json

    import ray.train
    import torch
    import torch.distributed as dist

    from overopt.logprobs import pack_prompt_response, sequence_logprobs
    from overopt.models import load_model
    from overopt.train.engine import deepspeed_config, initialize_engine, partitioned_loading, reference_engine, save_hf_checkpoint

    rank = ray.train.get_context().get_world_rank()
    model = load_model("tiny", vocab_size=45, seed=0)
    total = sum(p.numel() for p in model.parameters())
    engine, _ = initialize_engine(model, 1e-3, 0, deepspeed_config(2, 2, 3, "fp32", 1.0))
    local = sum(p.ds_tensor.numel() for p in engine.module.parameters())
    gathered_away = all(tuple(p.shape) == (0,) for p in engine.module.parameters())
    # One real optimizer step so the checkpoint is not just the initial weights.
    batch = pack_prompt_response([[1, 5, 6, 4], [1, 7, 4]], [[8, 9, 2], [10, 2]], 0)
    logps, _ = sequence_logprobs(engine, **batch)
    engine.backward(-logps.mean())
    engine.step()
    with torch.no_grad():
        engine_logps, _ = sequence_logprobs(engine, **batch)
    save_hf_checkpoint(engine, config["out"])
    reloaded = None
    if rank == 0:
        with torch.no_grad():
            reloaded, _ = sequence_logprobs(load_model(config["out"]).eval(), **batch)
        reloaded = reloaded.tolist()
    dist.barrier()
    # Loading under ZeRO-3 partitioning (what every trial worker does): sharded as it is built, before
    # any engine exists, and the shards hold the checkpoint's weights.
    ds_config = deepspeed_config(2, 2, 3, "fp32", 1.0)
    with partitioned_loading(ds_config):
        partitioned = load_model(config["out"])
    loaded_sharded = all(tuple(p.shape) == (0,) and hasattr(p, "ds_tensor") for p in partitioned.parameters())
    loaded_local = sum(p.ds_tensor.numel() for p in partitioned.parameters())
    engine2, _ = initialize_engine(partitioned, 1e-3, 0, ds_config)
    with torch.no_grad():
        partitioned_logps, _ = sequence_logprobs(engine2, **batch)
    # The same checkpoint as a frozen ZeRO-3 reference (reference.mode: sharded): no optimizer, sharded.
    with partitioned_loading(ds_config):
        reference = reference_engine(load_model(config["out"]), ds_config)
    with torch.no_grad():
        reference_logps, _ = sequence_logprobs(reference, **batch)
    reference_sharded = all(tuple(p.shape) == (0,) and not p.requires_grad for p in reference.module.parameters())
    facts = {
        "total": total,
        "local": local,
        "gathered_away": gathered_away,
        "engine_logps": engine_logps.tolist(),
        "reloaded_logps": reloaded,
        "loaded_sharded": loaded_sharded,
        "loaded_local": loaded_local,
        "partitioned_logps": partitioned_logps.tolist(),
        "reference_sharded": reference_sharded,
        "reference_logps": reference_logps.tolist(),
    }
    with open(f"{config['out']}-rank{rank}.json", "w") as f:  # every rank's own view, read by the test
        json.dump(facts, f)


def test_zero3_shards_and_consolidates(ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path / "consolidated"
    TorchTrainer(
        _zero3_worker,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="zero3", storage_path=str(tmp_path / "ray")),
    ).fit()
    ranks = [json.loads((tmp_path / f"consolidated-rank{r}.json").read_text()) for r in (0, 1)]
    for facts in ranks:
        assert facts["local"] == pytest.approx(facts["total"] / 2, rel=0.05), "each rank holds about half"
        assert facts["gathered_away"], "outside a gather every parameter is an empty placeholder"
    assert ranks[0]["local"] + ranks[1]["local"] >= ranks[0]["total"]
    assert (out / "model.safetensors").exists()
    assert ranks[0]["reloaded_logps"] == pytest.approx(ranks[0]["engine_logps"], abs=1e-5)
    for facts in ranks:  # from_pretrained under partitioned_loading: never the whole model on one rank
        assert facts["loaded_sharded"] and facts["loaded_local"] == pytest.approx(facts["total"] / 2, rel=0.05)
        assert facts["partitioned_logps"] == pytest.approx(facts["engine_logps"], abs=1e-5)
        assert facts["reference_sharded"], "the frozen reference is partitioned too"
        assert facts["reference_logps"] == pytest.approx(facts["engine_logps"], abs=1e-5)


# ------------------------------------------------------------------------------------------------
# Micro-batches with gradient accumulation, and gradient checkpointing, under ZeRO-3

ACCUMULATION_SETTINGS = ((None, False), (4, False), (4, True))  # (train.micro_batch_size, train.gradient_checkpointing)
ACCUMULATION_BATCH = 16  # pairs per optimizer step: 8 per rank, so micro-batches of 4 make 2 per step


def _accumulation_rank(rank: int, world: int, port: int, model_dir: str, pairs, out: str) -> None:
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as the Ray Train workers on CPU
    os.environ["LOCAL_RANK"] = str(rank)
    import deepspeed
    import torch
    import torch.distributed as dist

    from overopt.models import load_model
    from overopt.train.engine import consolidated_state_dict, deepspeed_config, partitioned_loading
    from overopt.train.loop import AlignmentLoop, enable_gradient_checkpointing

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    share = ACCUMULATION_BATCH // world
    results = []
    for micro, checkpointing in ACCUMULATION_SETTINGS:
        ds_config = deepspeed_config(micro or share, world, 3, "fp32", 1.0, share // (micro or share))
        with partitioned_loading(ds_config):  # as the trial workers load: sharded from the start
            model = load_model(model_dir)
        if checkpointing:
            enable_gradient_checkpointing(model)
        # Plain SGD as the client optimizer (train.optimizer's RMSprop and AdamW would normalise the
        # first step's gradient away): equal updated weights then mean equal (clipped) gradients.
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), config=ds_config, dist_init_required=False
        )
        loop = AlignmentLoop(
            engine,
            pairs,
            objective="dpo",
            beta=0.5,
            batch_size=ACCUMULATION_BATCH,
            pad_token_id=0,
            experiment_seed=0,
            trial_seed=0,
            rank=rank,
            world=world,
            micro_batch_size=micro,
        )
        values = loop.train_step()
        checkpointed = sum(1 for layer in engine.module.gpt_neox.layers if layer.gradient_checkpointing)
        state = consolidated_state_dict(engine)  # collective: every rank gathers, rank 0 keeps the whole model
        sharded = all(tuple(p.shape) == (0,) for p in engine.module.parameters())
        results.append(
            {
                "values": values,
                "state": state,
                "checkpointed_layers": checkpointed,
                "sharded": sharded,
                "micro_steps": engine.micro_steps,
                "global_steps": engine.global_steps,
            }
        )
        del engine, model
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def test_zero3_micro_batches_and_checkpointing_give_the_whole_batch_step(tmp_path, task, tokenizer, tiny_model):
    import socket

    import numpy as np
    import pyarrow as pa
    import torch
    import torch.multiprocessing as mp

    from overopt.data.synthetic import Labeller, demonstration_sampler, make_preference_pairs
    from overopt.data.tokenize import tokenize_table
    from overopt.logprobs import pair_logprobs

    tiny_model.save_pretrained(tmp_path / "model")
    rows, _ = make_preference_pairs(task.prompts(32, seed=0), demonstration_sampler(task, 0), Labeller(task), seed=0)
    batch, _ = tokenize_table("pairs", rows, tokenizer)
    with torch.no_grad():
        logps, _, n = pair_logprobs(tiny_model, batch, tokenizer.pad_token_id)
    noise = np.random.default_rng(0).normal(0.0, 2.0, size=2 * n)  # pairs whose losses differ (at the reference each is log 2)
    pairs = pa.table(
        {
            **{k: batch[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")},
            "reference_chosen_logps": logps[:n].numpy() + noise[:n],
            "reference_rejected_logps": logps[n:].numpy() + noise[n:],
        }
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "results.pt")
    mp.spawn(_accumulation_rank, args=(2, port, str(tmp_path / "model"), pairs, out), nprocs=2, join=True)

    (whole, micro, checkpointed) = torch.load(out, weights_only=False)
    assert [r["checkpointed_layers"] for r in (whole, micro, checkpointed)] == [0, 0, 2]
    assert all(r["sharded"] for r in (whole, micro, checkpointed))  # ZeRO-3 partitions throughout
    assert (whole["micro_steps"], micro["micro_steps"], checkpointed["micro_steps"]) == (1, 2, 2)
    assert whole["global_steps"] == micro["global_steps"] == checkpointed["global_steps"] == 1  # one optimizer step each
    assert whole["values"]["grad_norm"] > 1.0  # so the clipping of the accumulated gradient is part of the check
    initial = dict(tiny_model.state_dict())
    assert all(not torch.equal(whole["state"][name], initial[name]) for name in whole["state"])  # every tensor moved
    for result in (micro, checkpointed):
        for name, value in whole["values"].items():
            assert result["values"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        for name, weight in whole["state"].items():
            torch.testing.assert_close(result["state"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
