"""Dynamic micro-batching: concurrent calls share one model run.

Worker threads own the model. Callers hand in their decoded images and wait. A free worker
takes everything queued (up to `max_batch`) and runs it at once, so under load the batch grows
by itself while a lone call is never held back. It waits up to `max_wait_ms` for more only when
other callers have announced they are about to submit (they are still decoding), which is when
waiting pays. With several workers (each running the model on its own share of the cores,
see `server.serving.model_layout`) one batch runs while the next gathers.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from time import monotonic

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Job:
    pixels: np.ndarray
    future: Future[np.ndarray]


@dataclass(frozen=True)
class BatchStats:
    batches: int
    images: int
    largest_batch: int


class MicroBatcher:
    """Runs `model(pixels) -> vectors` on batches gathered from concurrent callers."""

    def __init__(
        self,
        model: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        self._model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._coming = 0
        self._free = 0  # workers waiting for work
        self._cond = threading.Condition()
        self._local = threading.local()
        self._closed = False
        self._batches = self._images = self._largest = 0
        self._workers = [
            threading.Thread(target=self._loop, name=f"model-{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce that this thread will call `run` soon (it is decoding), so the worker may
        wait for it; the announcement ends at that `run` or when the block exits."""
        with self._cond:
            self._coming += 1
            self._local.expecting = True
        try:
            yield
        finally:
            with self._cond:
                self._stop_expecting()

    def _stop_expecting(self) -> None:
        if getattr(self._local, "expecting", False):
            self._local.expecting = False
            self._coming -= 1
            self._cond.notify_all()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of preprocessed images; blocks until done. Thread-safe. A batch is
        cut into runs of at most max_batch, and shared among the workers (32 images on two
        workers: two runs of 16 side by side, not one on half the cores)."""
        if len(pixels) == 0:
            return self._model(pixels)
        size = min(self.max_batch, -(-len(pixels) // len(self._workers)))
        jobs = [
            _Job(pixels[start : start + size], Future()) for start in range(0, len(pixels), size)
        ]
        with self._cond:
            self._stop_expecting()
            if self._closed:
                raise RuntimeError("the model worker has stopped")
            self._queue.extend(jobs)
            self._queued_images += len(pixels)
            self._cond.notify_all()
        return np.concatenate([job.future.result() for job in jobs])

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(self._batches, self._images, self._largest)

    def queue_depth(self) -> int:
        """Images handed in and waiting for the model (a backlog when it stays high)."""
        with self._cond:
            return self._queued_images

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()

    def _take_batch(self) -> list[_Job]:
        """Block for work; return queued jobs totalling at most max_batch images, and no more
        than this worker's share of the queue when other workers are free too (else one takes
        every waiting caller and the others idle: with 8 callers, the runs would never overlap).
        """
        with self._cond:
            self._free += 1
            try:
                batch: list[_Job] = []
                while not batch:  # another worker may empty the queue while this one waits
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return []  # closed and drained
                    deadline = monotonic() + self.max_wait
                    while (
                        self._queued_images < self.max_batch
                        and self._coming > 0
                        and not self._closed
                        and (remaining := deadline - monotonic()) > 0
                    ):
                        self._cond.wait(remaining)
                    share = min(self.max_batch, -(-self._queued_images // self._free))
                    size = 0
                    while self._queue and (not batch or size + len(self._queue[0].pixels) <= share):
                        job = self._queue.popleft()
                        batch.append(job)
                        size += len(job.pixels)
                    self._queued_images -= size
                return batch
            finally:
                self._free -= 1

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return  # closed and drained
            try:
                pixels = np.concatenate([job.pixels for job in batch])
                vectors = self._model(pixels)
            except Exception as exc:  # every waiting caller gets the failure
                for job in batch:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                job.future.set_result(vectors[start : start + len(job.pixels)])
                start += len(job.pixels)
            with self._cond:
                self._batches += 1
                self._images += len(pixels)
                self._largest = max(self._largest, len(pixels))
            if self._on_batch is not None:
                try:
                    self._on_batch(len(pixels))
                except Exception:  # metrics must never stop a thread that runs the model
                    log.exception("the batch observer failed")
