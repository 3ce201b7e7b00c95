"""DeepSpeed ZeRO-3 across 2 Ray Train workers on CPU: parameters really shard, the consolidated
Hugging Face checkpoint reloads with from_pretrained and gives the engine's log-probs, and loading it
under ZeRO-3 partitioning (as trial workers do) shards it from the start with the same weights."""

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
    facts = {"total": total, "local": local, "gathered_away": gathered_away,
             "engine_logps": engine_logps.tolist(), "reloaded_logps": reloaded,
             "loaded_sharded": loaded_sharded, "loaded_local": loaded_local, "partitioned_logps": partitioned_logps.tolist(),
             "reference_sharded": reference_sharded, "reference_logps": reference_logps.tolist()}
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
