"""Micro-batching: concurrent callers share model runs and each gets its own answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from server.batcher import MicroBatcher


def tagged(n: int, tag: float) -> np.ndarray:
    """n fake images whose pixels all equal tag, so the answer shows whose image it was."""
    return np.full((n, 3, 2, 2), tag, dtype=np.float32)


def slow_model(seen: list[int], delay: float = 0.05):  # type: ignore[no-untyped-def]
    def model(pixels: np.ndarray) -> np.ndarray:
        seen.append(len(pixels))
        time.sleep(delay)
        return pixels.reshape(len(pixels), -1)[:, :1].copy()

    return model


def two_at_once(seen: list[int]):  # type: ignore[no-untyped-def]
    """A model whose every run waits, up to 10 s, until another run is inside it too: it
    fails (BrokenBarrierError) unless two workers run side by side."""
    both_running = threading.Barrier(2, timeout=10)

    def model(pixels: np.ndarray) -> np.ndarray:
        seen.append(len(pixels))
        both_running.wait()
        return pixels.reshape(len(pixels), -1)[:, :1].copy()

    return model


def in_threads(call: Callable[[int], None], count: int) -> None:
    """call(0) ... call(count - 1), each on a thread of its own, all at once."""
    threads = [threading.Thread(target=call, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_callers_are_batched_and_get_their_own_answers() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(slow_model(sizes), max_batch=8, max_wait_ms=0)
    answers: dict[int, np.ndarray] = {}

    def call(tag: int) -> None:
        answers[tag] = batcher.run(tagged(3, tag))

    in_threads(call, 10)
    batcher.close()
    assert all(np.all(answers[t] == t) and answers[t].shape == (3, 1) for t in range(10))
    assert sum(sizes) == 30 and max(sizes) <= 8
    assert batcher.stats().largest_batch > 3  # some run served more than one caller
    assert batcher.stats().images == 30


def test_a_big_request_is_split_into_max_batch_runs() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(slow_model(sizes, delay=0), max_batch=4)
    out = batcher.run(np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 3, 2, 2)))
    batcher.close()
    assert out[:, 0].tolist() == list(range(10))
    assert sizes == [4, 4, 2]


def test_a_lone_call_is_not_held_back_by_max_wait() -> None:
    batcher = MicroBatcher(slow_model([], delay=0), max_batch=32, max_wait_ms=60_000)
    caller = threading.Thread(target=batcher.run, args=(tagged(1, 1),))
    caller.start()
    caller.join(timeout=10)  # it would take 60 s if the worker waited for company
    assert not caller.is_alive()
    batcher.close()


def test_the_worker_waits_for_a_caller_that_announced_itself() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(slow_model(sizes, delay=0), max_batch=32, max_wait_ms=5_000)
    announced = threading.Event()

    def decoding_caller() -> None:
        with batcher.expecting():
            announced.set()
            time.sleep(0.2)  # still decoding when the other call arrives
            batcher.run(tagged(1, 1))

    slow = threading.Thread(target=decoding_caller)
    slow.start()
    announced.wait()
    batcher.run(tagged(1, 2))
    slow.join()
    batcher.close()
    assert sizes == [2]


def test_a_model_failure_reaches_every_caller_of_that_batch() -> None:
    def broken(pixels: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken)
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.run(tagged(2, 0))
    batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.run(tagged(1, 0))


def test_a_failing_batch_observer_does_not_stop_the_model_worker() -> None:
    def observer(size: int) -> None:
        raise RuntimeError("metrics exploded")

    batcher = MicroBatcher(slow_model([], delay=0), on_batch=observer)
    try:
        for tag in (1.0, 2.0):  # the second call would wait for ever on a dead worker
            assert batcher.run(tagged(1, tag)).tolist() == [[tag]]
    finally:
        batcher.close()


def test_two_workers_run_batches_side_by_side_and_share_a_burst() -> None:
    """Eight callers announce themselves, then submit at once: the two free workers take four
    each and run together (each run waits for the other inside the model; with one worker,
    or one taking the whole burst, the barrier would break). Three bursts: a worker that found
    the queue emptied by the other must still be there for the next."""
    sizes: list[int] = []
    model = two_at_once(sizes)
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=10_000, workers=2)

    def burst() -> dict[int, np.ndarray]:
        answers: dict[int, np.ndarray] = {}
        announced = threading.Barrier(8)

        def call(tag: int) -> None:
            with batcher.expecting():
                announced.wait()
                answers[tag] = batcher.run(tagged(1, tag))

        in_threads(call, 8)
        return answers

    try:
        for number in range(3):
            time.sleep(0.2)  # both workers back to waiting for work
            answers = burst()
            assert all(answers[t].tolist() == [[t]] for t in range(8)), f"burst {number}"
    finally:
        batcher.close()
    assert sizes == [4] * 6


def test_one_big_request_is_shared_among_the_workers() -> None:
    """A reindex's chunk, an AddCategory's photos: on two workers, 10 images run as 5 and 5
    side by side (each run waits for the other inside the model), in order."""
    sizes: list[int] = []
    model = two_at_once(sizes)
    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=0, workers=2)
    try:
        out = batcher.run(
            np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((10, 3, 2, 2))
        )
    finally:
        batcher.close()
    assert out[:, 0].tolist() == list(range(10))
    assert sizes == [5, 5]
