"""Micro-batching: concurrent requests stacked into one ``predictor.run`` call.

`MicroBatcher` lives on the server's event loop. ``await batcher.submit(x)`` queues an
N x C x H x W array (a bounded queue: `QueueFull` when it is full) and returns that
request's rows of every output. A collector task takes the first waiting request, then
keeps taking more until ``max_batch`` rows are gathered or ``max_wait_ms`` has passed since
the first, and hands them to one of ``workers`` inference threads, which stacks them and
runs the batch (the event loop never copies the batch or runs the model). While the workers are busy, requests pile up in
the queue and the next batch starts full: under load the wait is rarely paid.

`BatchedPredictor` is a `Predictor` look-alike for code running in other threads (the
task modules' ``*_batch(predictor, batch, ...)`` functions): its ``run`` goes through the
batcher, so any task function is micro-batched without knowing it.

Batching pays most on ONNX Runtime, torch and OpenVINO; exported LiteRT graphs have batch
1 baked in and the LiteRT predictor loops over the rows, so there it only saves the
per-call overhead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


class QueueFull(Exception):
    """The batcher's queue is full: the caller should answer 503 and ask to retry."""


class Stopped(Exception):
    """The batcher is shutting down and takes no new work."""


class MicroBatcher:
    """Batches ``submit`` ed arrays into calls of ``run(batch) -> {name: array with batch first}``.

    Args:
        run: the model call (e.g. ``predictor.run``); called from worker threads.
        max_batch: rows per call at most (1 = no batching: one call per request).
        max_wait_ms: how long the first request of a batch waits for company.
        queue_size: requests waiting at most; more raise `QueueFull`.
        workers: inference calls that may run at once.
        on_batch: called on the event loop with (rows, seconds) after each call (metrics).
        expected: how many requests are on their way (admitted by the server, not yet
            submitted); while none is, a batch goes at once instead of waiting ``max_wait_ms``
            for company that is not coming (a lone client pays no batching delay).
    """

    def __init__(self, run: Callable[[np.ndarray], dict[str, np.ndarray]], max_batch: int = 8,
                 max_wait_ms: float = 5.0, queue_size: int = 64, workers: int = 1,
                 on_batch: Callable[[int, float], None] | None = None,
                 expected: Callable[[], int] | None = None) -> None:  # fmt: skip
        if max_batch < 1 or workers < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, workers and queue_size must be >= 1 and max_wait_ms >= 0")
        self._run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1e3
        self.queue_size, self.workers, self.on_batch, self.expected = queue_size, workers, on_batch, expected
        self.outstanding = 0  # submitted and not yet answered
        self._queue: asyncio.Queue | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._busy: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._carry: tuple | None = None  # a request taken from the queue that did not fit the last batch
        self._buffers = threading.local()  # per worker thread: {(row shape, dtype): reusable batch buffer}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.accepting = False

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return (self._queue.qsize() if self._queue is not None else 0) + (self._carry is not None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.queue_size)
        self._slots = asyncio.Semaphore(self.workers)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="mobilenets-infer")
        self._task = asyncio.create_task(self._collect(), name="mobilenets-batcher")
        self.accepting = True

    async def stop(self) -> None:
        """Take no new work, finish everything queued and running, then stop the threads."""
        self.accepting = False
        if self._queue is not None:
            while self.depth or self._busy:
                await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """This request's rows of every output (waits for its batch to run)."""
        if not self.accepting or self._queue is None:
            raise Stopped("the server is shutting down")
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((x, fut))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.queue_size} requests are already waiting") from None
        self.outstanding += 1
        try:
            return await fut
        finally:
            self.outstanding -= 1

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            await self._slots.acquire()
            items = [self._carry] if self._carry is not None else [await self._queue.get()]
            self._carry = None
            rows = len(items[0][0])
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0 or (self.expected is not None and self.expected() <= 0):
                        break
                    if self.expected is not None:  # look again soon: the one expected may have failed
                        await asyncio.sleep(min(left, 0.0002))
                        continue
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if rows + len(item[0]) > self.max_batch:
                    self._carry = item  # it starts the next batch
                    break
                items.append(item)
                rows += len(item[0])
            items = [it for it in items if not it[1].done()]  # callers that went away
            if not items:
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(items))
            self._busy.add(task)
            task.add_done_callback(self._busy.discard)

    def _run_parts(self, parts: list[np.ndarray]) -> dict[str, np.ndarray]:
        """``run`` on the parts stacked (on a worker thread: copying megabytes must not stall the event loop).

        The stacked batch goes into this thread's reusable buffer: no fresh allocation (and
        page faults) per call. ``run`` only reads its input while it runs.
        """
        if len(parts) == 1:
            return self._run(parts[0])
        rows = sum(len(x) for x in parts)
        key = (parts[0].shape[1:], parts[0].dtype)
        buffers = self._buffers.__dict__
        buf = buffers.get(key)
        if buf is None or len(buf) < rows:
            buf = buffers[key] = np.empty((max(rows, self.max_batch), *key[0]), key[1])
        return self._run(np.concatenate(parts, out=buf[:rows]))

    async def _execute(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        assert self._slots is not None and self.loop is not None
        try:
            parts = [x for x, _ in items]
            start = time.perf_counter()
            try:
                out = await self.loop.run_in_executor(self._pool, self._run_parts, parts)
            except Exception as e:  # noqa: BLE001 - the callers get the error, not the batcher
                if len(items) == 1:
                    if not items[0][1].done():
                        items[0][1].set_exception(e)
                    return
                # one bad request (say, inputs that overflow to Inf) must not fail its neighbours:
                # run each alone so only the culprit gets the error
                for x, fut in items:
                    try:
                        one = await self.loop.run_in_executor(self._pool, self._run, x)
                    except Exception as e1:  # noqa: BLE001
                        if not fut.done():
                            fut.set_exception(e1)
                    else:
                        if not fut.done():
                            fut.set_result(one)
                return
            if self.on_batch is not None:
                self.on_batch(sum(len(x) for x in parts), time.perf_counter() - start)
            i = 0
            for x, fut in items:
                n = len(x)
                if not fut.done():
                    fut.set_result({k: v[i : i + n] for k, v in out.items()})
                i += n
        finally:
            self._slots.release()


class BatchedPredictor:
    """A `Predictor` whose ``run`` goes through a `MicroBatcher` (for code in worker threads).

    Everything else (cfg, transform, labels, outputs, ...) is the wrapped predictor's.
    """

    def __init__(self, predictor: Any, batcher: MicroBatcher, timeout: float | None = 120.0) -> None:
        self._predictor, self._batcher, self._timeout = predictor, batcher, timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def run(self, batch: np.ndarray, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        p = self._predictor
        wanted = p.output_names if outputs is None else tuple(outputs)
        unknown = [n for n in wanted if n not in p.output_names]
        if unknown:
            from ..errors import MobilenetsError

            raise MobilenetsError(f"{p.name} has no output {unknown[0]!r} (it has {', '.join(p.output_names)})")
        x = p.check_batch(batch)
        assert self._batcher.loop is not None
        result = asyncio.run_coroutine_threadsafe(self._batcher.submit(x), self._batcher.loop).result(self._timeout)
        return {n: result[n] for n in wanted}

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        if "probabilities" not in self._predictor.output_names:
            return self._predictor.probabilities(batch)  # its own error
        return self.run(batch, ("probabilities",))["probabilities"]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if "embedding" not in self._predictor.output_names:
            return self._predictor.embed(batch)
        return self.run(batch, ("embedding",))["embedding"]
