"""Where a sweep's random draws come from: the order of the training data and the evaluation samples.

Every stream is derived by numpy's ``SeedSequence`` from a tuple of non-negative integers that names
it: a stream tag, the experiment's master seed, the trial, the epoch or step. ``SeedSequence`` hashes
the whole tuple into a 128-bit pool, so two different tuples give unrelated streams; nothing is
reduced modulo a small number, so streams never collide in practice (tests/unit/test_streams.py
checks a grid larger than the paper's). Nothing here imports Ray or torch: the sweep's workers, the
one-process screen (overopt/local_trial.py) and the evaluation pipeline all call these functions, so
the same seed means the same draws wherever a trial runs.

    order = epoch_order(4000, experiment_seed=0, trial_seed=1, epoch=2)  # a permutation of the 4000 pairs
    rows = batch_rows(order, batch_size=32, batch_index=5, rank=1, world=2)  # rank 1's 16 pairs of batch 5
    seed = evaluation_seed(0, trial_key("dpo", 0.1, "tiny", 0), step=42)  # one evaluation's samples
"""

from __future__ import annotations

import hashlib

import numpy as np

# Stream tags: the first word of every stream's tuple, so that no two kinds of draw share a stream.
ALIGNMENT_ORDER, SFT_ORDER, EVALUATION, EVALUATION_BLOCK = 1, 2, 3, 4


def _text_words(text: str) -> list[int]:
    """A string as eight 32-bit words (its SHA-256): trial names enter a SeedSequence whole."""
    digest = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]


def _seed_63(entropy: list[int]) -> int:
    """A 63-bit integer from a SeedSequence over ``entropy``: fits torch.manual_seed and vLLM's seed."""
    low, high = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def epoch_order(n_rows: int, experiment_seed: int, trial_seed: int, epoch: int, stage: int = ALIGNMENT_ORDER) -> np.ndarray:
    """The order in which one epoch visits ``n_rows`` rows: a permutation drawn from (stage, experiment
    seed, trial seed, epoch). Every epoch draws afresh, and trials that differ only in their seed see
    different orders. The whole global order is drawn before it is split across workers (batch_rows)."""
    rng = np.random.default_rng(np.random.SeedSequence([stage, experiment_seed, trial_seed, epoch]))
    return rng.permutation(n_rows)


def batch_rows(order: np.ndarray, batch_size: int, batch_index: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The rows of global batch ``batch_index`` of ``order`` that ``rank`` of ``world`` trains on: the
    batch is cut into ``world`` equal contiguous shares, so the ranks together see exactly the batch a
    single process would (and their mean gradient is the single process's)."""
    if batch_size % world:
        raise ValueError(f"a batch of {batch_size} does not split evenly across {world} workers")
    if (batch_index + 1) * batch_size > len(order):
        raise IndexError(f"batch {batch_index} of {batch_size} runs past the {len(order)} rows of the epoch")
    share = batch_size // world
    start = batch_index * batch_size + rank * share
    return order[start : start + share]


def evaluation_seed(experiment_seed: int, trial: str, step: int) -> int:
    """The sampling stream of one evaluation: (experiment seed, the trial's name, the step evaluated).
    Evaluations of different trials, and of different steps of one trial, draw independent samples."""
    return _seed_63([EVALUATION, experiment_seed, *_text_words(trial), step])


def trial_key(objective: str, beta: float, size: str, seed: int) -> str:
    """What names a trial in its streams: its grid point, the same in a sweep and in a screen."""
    return f"{objective}|{float(beta)!r}|{size}|{int(seed)}"


def block_seed(stream: int, first_index: int) -> int:
    """The seed of one block of an evaluation's prompts (blocks are scored by parallel tasks), from the
    evaluation's stream and the index of the block's first prompt."""
    return _seed_63([EVALUATION_BLOCK, stream & 0xFFFFFFFF, stream >> 32, first_index])
