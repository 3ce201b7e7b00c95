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

With ``evaluation.scoring: training_workers`` (``serve_scoring``) the actor also carries the
evaluation's log-prob requests to the training workers, which hold the only copy of the policy at the
checkpoint's step (ZeRO-3 shards) and the sharded reference: a scoring task calls ``score`` and waits;
training rank 0, waiting in ``hand_over`` for that evaluation, takes each request
(``scoring_request``), all ranks score it and rank 0 answers (``scored``). If the workers are restarted
while a step is open, the restored workers hand that step over again (``wants`` says yes) and the
requests the lost rank 0 had taken are queued again; if training fails, ``close_scoring`` ends every
waiting request with the reason.

The driver's stop decision travels the same way: rank 0 reports its progress before every step
(``progress``) and learns whether the driver called ``stop_training``; the driver reads how far
training got (``trained_steps``) for its rows and its stop record.

The actor is asynchronous: a waiting ``hand_over`` does not block ``next``, ``evaluated`` or ``score``.

    handover = CheckpointHandover.remote(slots=2, wait_for_evaluation=False, known_steps=[0, 3])
    if ray.get(handover.wants.remote(step)):                                          # training rank 0
        waited_s = ray.get(handover.hand_over.remote(step, checkpoint_uri, train_row))
    item = ray.get(handover.next.remote(timeout_s=1.0))                              # trial driver
    handover.evaluated.remote(step)                                                  # trial driver
    stop = ray.get(handover.progress.remote(step))                                    # training rank 0, every step
    handover.stop_training.remote()                                                   # trial driver: its stop decision
    scores = ray.get(handover.score.remote(prompt_ids, response_ids))                # scoring task (serve_scoring)
    request = ray.get(handover.scoring_request.remote(timeout_s=0.5))                # training rank 0 (serve_scoring)
    handover.scored.remote(request[0], scores)                                       # training rank 0
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import ray


class _CheckpointHandover:
    def __init__(self, slots: int, wait_for_evaluation: bool, known_steps: Iterable[int] = (), serve_scoring: bool = False):
        self._slots = asyncio.Semaphore(slots)  # open evaluations (handed over, not yet evaluated)
        self._wait = wait_for_evaluation
        self._queue: asyncio.Queue = asyncio.Queue()  # handed over, not yet taken by the driver
        self._done: dict[int, asyncio.Event] = {}
        self._known: set[int] = set(known_steps)  # reported, or handed over: never handed over again
        self._recovered: set[int] = set()  # put back by the driver: they hold no slot
        self._serve_scoring = serve_scoring  # the training workers score the evaluations' samples
        self._requests: asyncio.Queue = asyncio.Queue()  # ids of scoring requests not yet taken by rank 0
        self._open_requests: dict[int, tuple[list, list, asyncio.Future]] = {}  # id -> (prompts, responses, answer)
        self._taken: set[int] = set()  # taken by rank 0, not yet answered
        self._request_ids = 0
        self._scoring_closed: str | None = None  # why no request will be answered any more
        self._trained_steps = 0  # how far training has got (rank 0 says so before every step)
        self._stop = False  # the driver decided to stop the trial: training ends at its next step

    @ray.method
    async def wants(self, step: int) -> bool:
        """Whether ``step`` still has to be handed over (False: reported or handed over already). With
        scoring on the workers, an open step is wanted again: restored workers must score its samples."""
        return step not in self._known or (self._serve_scoring and step in self._done)

    @ray.method
    async def hand_over(self, step: int, checkpoint: str, train_row: dict[str, Any]) -> float:
        """Called by training rank 0; returns the seconds training waited here (0 for a known step)."""
        started = time.monotonic()
        if self._serve_scoring and step in self._done:  # restored workers, back at an open step
            for request in sorted(self._taken):  # what the lost rank 0 took is never answered: ask again
                await self._requests.put(request)
            self._taken.clear()
            await self._done[step].wait()
            return time.monotonic() - started
        if step in self._known:
            return 0.0
        self._known.add(step)
        await self._slots.acquire()
        self._done[step] = asyncio.Event()
        await self._queue.put((step, checkpoint, train_row))
        if self._wait:
            await self._done[step].wait()
        return time.monotonic() - started

    @ray.method
    async def recover(self, step: int, checkpoint: str, train_row: dict[str, Any]) -> None:
        """The driver puts back a checkpoint handed over before a restart and never evaluated."""
        if step in self._known:
            return
        self._known.add(step)
        self._recovered.add(step)
        self._done[step] = asyncio.Event()
        await self._queue.put((step, checkpoint, train_row))

    @ray.method
    async def next(self, timeout_s: float) -> tuple[int, str, dict[str, Any]] | None:
        """The oldest checkpoint not yet taken, or None after ``timeout_s`` (0: only one already here)."""
        if not self._queue.empty():  # asyncio.wait_for(..., 0) would not wait for even a queued item
            return self._queue.get_nowait()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    @ray.method
    async def evaluated(self, step: int) -> None:
        """The driver reported ``step``'s row: its slot is free and (inline) training goes on."""
        self._done.pop(step).set()
        if step in self._recovered:
            self._recovered.discard(step)
        else:
            self._slots.release()

    @ray.method
    async def progress(self, step: int) -> bool:
        """Training rank 0, before each step and when it ends: training has done ``step`` steps.
        Returns whether the driver decided to stop the trial (training then ends where it is)."""
        self._trained_steps = step
        return self._stop

    @ray.method
    async def stop_training(self) -> None:
        """The driver decided to stop the trial: training ends at its next step."""
        self._stop = True

    @ray.method
    async def trained_steps(self) -> int:
        """The optimizer steps training had done at its last ``progress`` call."""
        return self._trained_steps

    @ray.method
    async def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> dict[str, list]:
        """A scoring task's request: the sequences' policy and reference log-probs and response lengths,
        once the training workers have computed them (serve_scoring)."""
        if self._scoring_closed is not None:
            raise RuntimeError(self._scoring_closed)
        self._request_ids += 1
        answer = asyncio.get_running_loop().create_future()
        self._open_requests[self._request_ids] = (prompt_ids, response_ids, answer)
        await self._requests.put(self._request_ids)
        return await answer

    @ray.method
    async def scoring_request(self, timeout_s: float) -> tuple[int, list, list] | None:
        """The oldest unanswered request for training rank 0 to score, or None after ``timeout_s``."""
        try:
            request = self._requests.get_nowait() if not self._requests.empty() else await asyncio.wait_for(self._requests.get(), timeout_s)
        except asyncio.TimeoutError:
            return None
        if request not in self._open_requests:  # answered after it was queued again
            return None
        self._taken.add(request)
        prompt_ids, response_ids, _ = self._open_requests[request]
        return request, prompt_ids, response_ids

    @ray.method
    async def scored(self, request: int, scores: dict[str, list]) -> None:
        """Training rank 0's answer to ``request``."""
        self._taken.discard(request)
        entry = self._open_requests.pop(request, None)
        if entry is not None and not entry[2].done():
            entry[2].set_result(scores)

    @ray.method
    async def close_scoring(self, reason: str) -> None:
        """No training worker will answer any more (training failed): every waiting request fails with ``reason``."""
        self._scoring_closed = reason
        for _, _, answer in self._open_requests.values():
            if not answer.done():
                answer.set_exception(RuntimeError(reason))
        self._open_requests.clear()
        self._taken.clear()


# The actor (the plain class above is what the unit tests drive with asyncio).
CheckpointHandover = ray.remote(num_cpus=0)(_CheckpointHandover)
