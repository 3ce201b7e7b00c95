"""Training rank 0 -> the trial driver: one consolidated checkpoint per scheduled evaluation.

Training never evaluates. At each scheduled step rank 0 writes the policy's Hugging Face directory to
storage and hands it over here; the trial driver (sweep/trial.py) takes it, evaluates it through the
Ray Data pipeline and reports the row to Tune. How long training waits is the evaluation mode:

    inline: hand_over returns once that checkpoint's evaluation is in (training pauses, as the paper's
            setup does, and no step is trained past a stop decision);
    async:  hand_over returns at once while fewer than ``slots`` evaluations are open; training goes on
            and only waits when that many are still running.

Each step is handed over at most once per trial, across restarts: a resumed trial's workers train
steps again (from their last checkpoint, or from step 0 without one) and ask ``wants(step)`` first;
the driver creates the actor with the steps whose rows are already in storage, and puts back
(``recover``) the checkpoints handed over before a crash that were never evaluated.

The actor is asynchronous: a waiting ``hand_over`` does not block ``next`` or ``evaluated``.

    handover = CheckpointHandover.remote(slots=2, wait_for_evaluation=False, known_steps=[0, 3])
    if ray.get(handover.wants.remote(step)):                                          # training rank 0
        waited_s = ray.get(handover.hand_over.remote(step, checkpoint_uri, train_row))
    item = ray.get(handover.next.remote(timeout_s=1.0))                              # trial driver
    handover.evaluated.remote(step)                                                  # trial driver
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray


class _CheckpointHandover:
    def __init__(self, slots: int, wait_for_evaluation: bool, known_steps: list[int] = ()):
        self._slots = asyncio.Semaphore(slots)  # open evaluations (handed over, not yet evaluated)
        self._wait = wait_for_evaluation
        self._queue: asyncio.Queue = asyncio.Queue()  # handed over, not yet taken by the driver
        self._done: dict[int, asyncio.Event] = {}
        self._known: set[int] = set(known_steps)  # reported, or handed over: never handed over again
        self._recovered: set[int] = set()  # put back by the driver: they hold no slot

    async def wants(self, step: int) -> bool:
        """Whether ``step`` still has to be handed over (False: reported or handed over already)."""
        return step not in self._known

    async def hand_over(self, step: int, checkpoint: str, train_row: dict[str, Any]) -> float:
        """Called by training rank 0; returns the seconds training waited here (0 for a known step)."""
        started = time.monotonic()
        if step in self._known:
            return 0.0
        self._known.add(step)
        await self._slots.acquire()
        self._done[step] = asyncio.Event()
        await self._queue.put((step, checkpoint, train_row))
        if self._wait:
            await self._done[step].wait()
        return time.monotonic() - started

    async def recover(self, step: int, checkpoint: str, train_row: dict[str, Any]) -> None:
        """The driver puts back a checkpoint handed over before a restart and never evaluated."""
        if step in self._known:
            return
        self._known.add(step)
        self._recovered.add(step)
        self._done[step] = asyncio.Event()
        await self._queue.put((step, checkpoint, train_row))

    async def next(self, timeout_s: float) -> tuple[int, str, dict[str, Any]] | None:
        """The oldest checkpoint not yet taken, or None after ``timeout_s`` (0: only one already here)."""
        if not self._queue.empty():  # asyncio.wait_for(..., 0) would not wait for even a queued item
            return self._queue.get_nowait()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    async def evaluated(self, step: int) -> None:
        """The driver reported ``step``'s row: its slot is free and (inline) training goes on."""
        self._done.pop(step).set()
        if step in self._recovered:
            self._recovered.discard(step)
        else:
            self._slots.release()


# The actor (the plain class above is what the unit tests drive with asyncio).
CheckpointHandover = ray.remote(num_cpus=0)(_CheckpointHandover)
