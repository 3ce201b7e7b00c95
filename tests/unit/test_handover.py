"""The checkpoint hand-over between training rank 0 and the trial driver (sweep/handover.py), driven
with asyncio directly (the actor's class without Ray)."""

import asyncio

import pytest

from overopt.sweep.handover import _CheckpointHandover


def test_async_hand_over_does_not_wait_and_a_handed_over_checkpoint_is_never_missed():
    async def scenario():
        handover = _CheckpointHandover(slots=2, wait_for_evaluation=False, known_steps=[])
        assert await handover.next(0) is None  # nothing handed over yet
        # Async: training hands over two checkpoints without waiting for their evaluations.
        await asyncio.wait_for(handover.hand_over(1, "ckpt/1", {"step": 1}), 1)
        await asyncio.wait_for(handover.hand_over(5, "ckpt/5", {"step": 5}), 1)
        # Training has finished now; the driver, seeing that, asks without waiting: both are still there,
        # in step order (the trial loop reads "finished" before asking, so the last one is never lost).
        assert (await handover.next(0))[0] == 1
        assert (await handover.next(0))[0] == 5
        assert await handover.next(0) is None

    asyncio.run(scenario())


def test_a_third_hand_over_waits_for_a_free_slot_and_inline_waits_for_its_evaluation():
    async def scenario():
        handover = _CheckpointHandover(slots=2, wait_for_evaluation=False, known_steps=[])
        await handover.hand_over(1, "ckpt/1", {})
        await handover.hand_over(2, "ckpt/2", {})
        third = asyncio.ensure_future(handover.hand_over(3, "ckpt/3", {}))
        await asyncio.sleep(0.05)
        assert not third.done()  # both slots open: training waits
        await handover.next(0)
        await handover.evaluated(1)
        await asyncio.wait_for(third, 1)  # a slot came free

        inline = _CheckpointHandover(slots=1, wait_for_evaluation=True, known_steps=[0])
        assert not await inline.wants(0) and await inline.wants(4)  # step 0's row is already stored
        handing = asyncio.ensure_future(inline.hand_over(4, "ckpt/4", {}))
        assert (await inline.next(1))[0] == 4
        await asyncio.sleep(0.05)
        assert not handing.done()  # inline: training waits until the row is reported
        await inline.evaluated(4)
        assert await asyncio.wait_for(handing, 1) >= 0.05

    asyncio.run(scenario())


def test_scoring_requests_reach_training_rank_0_and_a_restart_asks_again():
    # evaluation.scoring: training_workers. A scoring task waits in score(); rank 0, waiting for the
    # evaluation, takes the request and answers it.
    async def scenario():
        handover = _CheckpointHandover(slots=1, wait_for_evaluation=True, known_steps=[], serve_scoring=True)
        handing = asyncio.ensure_future(handover.hand_over(3, "ckpt/3", {}))
        assert (await handover.next(1))[0] == 3
        assert await handover.scoring_request(0) is None  # nothing asked yet
        asked = asyncio.ensure_future(handover.score([[1, 2]], [[3]]))
        request, prompts, responses = await asyncio.wait_for(handover.scoring_request(1), 1)
        assert (prompts, responses) == ([[1, 2]], [[3]])
        # The workers are lost before they answer. Restored at step 3, they are wanted again, and the
        # request the lost rank 0 took is queued for the new one.
        assert await handover.wants(3) and await handover.wants(5)  # 5: never handed over
        restored = asyncio.ensure_future(handover.hand_over(3, "ckpt/3", {}))
        again = await asyncio.wait_for(handover.scoring_request(1), 1)
        assert again[0] == request and not asked.done()
        await handover.scored(request, {"policy_logps": [-1.0], "reference_logps": [-2.0], "lengths": [1], "ranks": 2})
        assert (await asyncio.wait_for(asked, 1))["ranks"] == 2
        assert not restored.done()  # the restored workers wait for the evaluation, as the first ones did
        await handover.evaluated(3)
        await asyncio.wait_for(asyncio.gather(handing, restored), 1)
        assert not await handover.wants(3)  # evaluated: never again

    asyncio.run(scenario())


def test_scoring_requests_fail_with_the_reason_once_training_has_failed():
    async def scenario():
        handover = _CheckpointHandover(slots=1, wait_for_evaluation=True, known_steps=[], serve_scoring=True)
        asked = asyncio.ensure_future(handover.score([[1]], [[2]]))
        await asyncio.sleep(0.01)
        await handover.close_scoring("training ended: worker lost")
        with pytest.raises(RuntimeError, match="worker lost"):
            await asyncio.wait_for(asked, 1)
        with pytest.raises(RuntimeError, match="worker lost"):
            await handover.score([[1]], [[2]])  # later requests fail at once instead of waiting forever

    asyncio.run(scenario())
