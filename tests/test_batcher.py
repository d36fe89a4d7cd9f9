"""The micro-batcher's scheduling: no wait when idle, the next batch fills while one runs."""

from __future__ import annotations

import asyncio
import threading

from rasa_hred.serving.batcher import MicroBatcher


class GatedSquares:
    """A batch function whose batches block until the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, numbers: list[int]) -> list[int]:
        self.calls.append(list(numbers))
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return [n * n for n in numbers]


async def wait_for_thread_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10), "the batch never started"


async def test_a_lone_request_runs_at_once_and_later_ones_form_the_next_batch():
    work = GatedSquares()
    batcher = MicroBatcher(work, max_batch_size=8)
    first = asyncio.ensure_future(batcher.submit(1))
    await wait_for_thread_event(work.started)  # started with no company and no wait
    assert work.calls == [[1]]
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0.05)  # they queue behind the running batch
    assert work.calls == [[1]]
    work.gate.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [4, 9, 16]
    assert work.calls == [[1], [2, 3, 4]]
    assert batcher.stats.to_dict()["sizes"] == {1: 1, 3: 1}
    batcher.close()


async def test_requests_beyond_max_batch_size_wait_for_the_following_batch():
    work = GatedSquares()
    batcher = MicroBatcher(work, max_batch_size=2)
    first = asyncio.ensure_future(batcher.submit(0))
    await wait_for_thread_event(work.started)
    later = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 6)]
    await asyncio.sleep(0.05)
    work.gate.set()
    assert [await first, *await asyncio.gather(*later)] == [0, 1, 4, 9, 16, 25]
    assert work.calls == [[0], [1, 2], [3, 4], [5]]
    batcher.close()


async def test_the_default_is_no_wait_and_a_batch_wait_is_opt_in():
    assert MicroBatcher(lambda xs: xs).batch_wait_ms == 0.0
    calls: list[list[int]] = []

    def echo(numbers: list[int]) -> list[int]:
        calls.append(list(numbers))
        return numbers

    batcher = MicroBatcher(echo, max_batch_size=8, batch_wait_ms=200)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.02)  # inside the 200 ms wait: still gathering
    second = asyncio.ensure_future(batcher.submit(2))
    assert await asyncio.gather(first, second) == [1, 2]
    assert calls == [[1, 2]]
    batcher.close()
