"""The asyncio micro-batcher: concurrent requests on an event loop become one batch.

A request that arrives while no batch is running starts one at once; requests that arrive
while a batch runs form the next one (up to ``max_batch_size``), which starts as soon as the
running one ends. So a lone request never waits for company, and under load batches grow by
themselves. ``batch_wait_ms`` > 0 adds a wait for more requests before each batch (off by
default: measured, it only costs latency). Batches run as one call of the batch function in
a single worker thread, so the event loop never waits on a forward pass. If a batch fails,
its requests are retried one by one so that an error reaches only the caller whose request
caused it. It works on every event loop it is used from (each gets its own queue); with
``enabled=False`` every request runs alone in the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

# A queued request: (request, its caller's future, the loop time it arrived).
_Pending = tuple[Request, asyncio.Future[Result], float]


@dataclass
class BatchStats:
    """What the micro-batcher did (a server can report these)."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    sizes: Counter[int] = field(default_factory=Counter)  # batch size -> batches
    last_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=100))

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.requests += size
        self.largest_batch = max(self.largest_batch, size)
        self.busy_seconds += seconds
        self.sizes[size] += 1
        self.last_sizes.append(size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "largest_batch": self.largest_batch,
            "mean_batch": self.requests / self.batches if self.batches else 0.0,
            "busy_seconds": round(self.busy_seconds, 6),
            "sizes": dict(sorted(self.sizes.items())),
            "last_sizes": list(self.last_sizes),
        }


class MicroBatcher(Generic[Request, Result]):
    """Runs ``run_batch`` (one result per request, in order) on gathered requests."""

    def __init__(
        self,
        run_batch: Callable[[list[Request]], list[Result]],
        *,
        enabled: bool = True,
        batch_wait_ms: float = 0.0,
        max_batch_size: int = 32,
        thread_name: str = "rasa-hred-batch",
    ) -> None:
        if max_batch_size < 1 or batch_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and batch_wait_ms >= 0")
        self.run_batch = run_batch
        self.enabled = enabled
        self.batch_wait_ms = batch_wait_ms
        self.max_batch_size = max_batch_size
        self.stats = BatchStats()
        self._thread_name = thread_name
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _LoopQueue[Request, Result]
        ] = weakref.WeakKeyDictionary()
        self.closed = False

    async def submit(self, request: Request) -> Result:
        """The result for ``request``, computed in a batch with concurrent submissions."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            worker = self._worker()
            started = time.perf_counter()
            results = await loop.run_in_executor(worker, self.run_batch, [request])
            self.stats.record(1, time.perf_counter() - started)
            return results[0]
        if self.closed:
            raise RuntimeError("the batcher is closed")
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        future: asyncio.Future[Result] = loop.create_future()
        queue.pending.append((request, future, loop.time()))
        if len(queue.pending) >= self.max_batch_size:
            queue.wake.set()  # a full batch need not wait out batch_wait_ms
        if queue.task is None or queue.task.done():
            queue.task = loop.create_task(self._drain(queue))
        return await future

    def close(self) -> None:
        """Stop the worker thread (after the batch it is running); idempotent."""
        self.closed = True
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    async def _drain(self, queue: _LoopQueue[Request, Result]) -> None:
        """The per-loop batching task: runs batches back to back until nothing is pending,
        then ends (the next request starts it again)."""
        loop = asyncio.get_running_loop()
        wait = self.batch_wait_ms / 1000.0
        while queue.pending:
            deadline = queue.pending[0][2] + wait
            while wait > 0 and len(queue.pending) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                queue.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(queue.wake.wait(), remaining)
            size = min(self.max_batch_size, len(queue.pending))
            batch = [queue.pending.popleft() for _ in range(size)]
            batch = [item for item in batch if not item[1].done()]  # cancelled callers
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Pending[Request, Result]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._worker(), self.run_batch, [item[0] for item in batch]
            )
        except Exception as error:
            self.stats.record(len(batch), time.perf_counter() - started)
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(error)
                return
            for item in batch:  # find the culprit(s): every request alone
                await self._run([item])
            return
        self.stats.record(len(batch), time.perf_counter() - started)
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _worker(self) -> ThreadPoolExecutor:
        if self.closed:
            raise RuntimeError("the batcher is closed")
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=self._thread_name
                )
            return self._executor


class _LoopQueue(Generic[Request, Result]):
    """Requests waiting on one event loop."""

    def __init__(self) -> None:
        self.pending: deque[_Pending[Request, Result]] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
