"""DeepSpeed on a Ray Train worker: the engine config, initialisation and checkpoint consolidation.

Ray Train has already set up the torch process group (gloo on CPU, nccl on GPU);
``deepspeed.initialize`` finds and reuses it. The same code runs ZeRO-3 on a CPU laptop (tiny models)
and on GPUs (Pythia sizes); only ``zero_stage`` and ``precision`` change.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from overopt.train.steps import optimizer_and_schedule


def deepspeed_config(
    micro_batch_per_worker: int,
    world_size: int,
    zero_stage: int,
    precision: str,
    max_grad_norm: float,
    gradient_accumulation_steps: int = 1,
) -> dict[str, Any]:
    """A DeepSpeed config for one optimizer step = micro_batch_per_worker x gradient_accumulation_steps
    x world_size sequences/pairs. With accumulation the engine's ``backward`` scales each micro-batch's
    loss by 1 / gradient_accumulation_steps and its ``step`` updates the weights only at the last one
    (``is_gradient_accumulation_boundary``): the step is the whole batch's."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_per_worker,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": micro_batch_per_worker * gradient_accumulation_steps * world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {
            "stage": zero_stage,
            # Tiny models: gather whole layers at once instead of many small collectives.
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": zero_stage == 3,
        },
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW as the client optimizer
        "steps_per_print": 10**9,  # progress goes to Ray, not DeepSpeed's log
        "wall_clock_breakdown": False,
    }


@contextmanager
def partitioned_loading(ds_config: dict[str, Any]):
    """Under ZeRO-3, models built inside this block are partitioned as they are created.

    transformers' DeepSpeed integration: while an ``HfDeepSpeedConfig`` is alive, ``from_pretrained``
    and ``from_config`` build the model inside ``deepspeed.zero.Init`` (in the engine's dtype) and load
    the checkpoint's tensors shard by shard, so no worker ever holds the whole model (7B x 8 workers
    would be ~224 GB of host RAM in fp32). Other ZeRO stages replicate the weights anyway: nothing to do.
    """
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    import deepspeed  # imported before zero.Init is entered (importing inside it breaks)
    from transformers.integrations import HfDeepSpeedConfig

    # DeepSpeed's own view of Ray's process group (as deepspeed.initialize would make it): without it
    # the config check sees a world of 1.
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank() if dist.is_initialized() else 0))
    deepspeed.init_distributed(dist_init_required=False)
    marker = HfDeepSpeedConfig(ds_config)  # transformers holds it by weak reference: ZeRO-3 on while it lives
    try:
        yield
    finally:
        del marker


def initialize_engine(model: torch.nn.Module, lr: float, warmup_steps: int, ds_config: dict[str, Any], optimizer: str = "adamw"):
    """DeepSpeed engine with a torch optimizer and a linear warm-up; returns (engine, scheduler).

    The torch optimizer is passed as DeepSpeed's client optimizer (ZeRO partitions its state).
    """
    import deepspeed  # imported here: only Ray Train workers need it

    # On CPU DeepSpeed would look for oneCCL; Ray's gloo group is already initialised and is reused.
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank() if dist.is_initialized() else 0))
    client_optimizer, scheduler = optimizer_and_schedule(model.parameters(), optimizer, lr, warmup_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=client_optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    return engine, scheduler


def reference_engine(model: torch.nn.Module, ds_config: dict[str, Any]):
    """A frozen model as a DeepSpeed ZeRO-3 engine without an optimizer: each rank keeps its shard and
    every forward gathers the layers it needs (collective: all ranks run it together)."""
    import deepspeed

    model.requires_grad_(False)
    config = {**ds_config, "zero_optimization": {**ds_config["zero_optimization"], "stage": 3}}
    engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
    engine.eval()
    return engine


def consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full model state dict on rank 0 (None elsewhere). Collective under ZeRO-3: call on all ranks."""
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()  # gathers shards; full dict on rank 0
    else:
        state = engine.module.state_dict()
    return state if dist.get_rank() == 0 else None


def save_hf_checkpoint(engine, directory: str, tokenizer=None) -> None:
    """Consolidate the (possibly sharded) model into a Hugging Face directory (safetensors) on rank 0,
    in the training dtype (bf16 training writes half the bytes of an fp32 copy; evaluation loads it in
    ``models.dtype``)."""
    state = consolidated_state_dict(engine)
    if dist.get_rank() == 0:
        assert state is not None  # rank 0 holds the full dict
        module = engine.module
        module.save_pretrained(directory, state_dict={k: v.contiguous() for k, v in state.items()})
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
    dist.barrier()
