"""What every bench shares: the machine it ran on, tables, CPU time, synthetic vectors."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def catalogue_vectors(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like a catalogue's embeddings, and held-out query photos.

    Categories (one per 1,000 vectors) are made of products (one per 10 vectors), each seen
    in several photos; a query is another photo of an indexed product. Uniformly random
    vectors would be a misleading benchmark: in high dimension all their distances are nearly
    equal, so no approximate index can find "the" neighbours.
    """
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(dim)  # noise of norm about 1 per unit of `scale`, in any dimension
    categories = rng.standard_normal((max(10, n // 1000), dim)).astype(np.float32) * scale
    products = categories[rng.integers(0, len(categories), max(1, n // 10))]
    products += rng.standard_normal(products.shape).astype(np.float32) * (0.7 * scale)

    def photos(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):  # in chunks, to bound peak memory at 1M
            stop = min(count, start + 100_000)
            chunk = products[rng.integers(0, len(products), stop - start)]
            chunk += rng.standard_normal(chunk.shape).astype(np.float32) * (0.35 * scale)
            out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        return out

    return photos(n), photos(queries)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads, not its children) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def images_per_second(
    run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, seconds: float, rounds: int = 3
) -> tuple[float, float]:
    """(images/s of the best round, median ms per call) running `run` on the same batch.

    The best round, as for GEMM: on a shared machine the slow rounds measure the neighbours.
    """
    run(pixels)  # warm-up
    timings: list[float] = []
    best = 0.0
    for _ in range(rounds):
        this_round: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds / rounds or len(this_round) < 2:
            began = time.perf_counter()
            run(pixels)
            this_round.append(time.perf_counter() - began)
        best = max(best, len(pixels) * len(this_round) / sum(this_round))
        timings += this_round
    return best, float(np.median(timings) * 1000)


def model_cpu_s_per_image(
    run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, seconds: float
) -> float:
    """CPU seconds (this process, all its threads) the model alone spends per image."""
    run(pixels)  # warm-up
    images = 0
    cpu, started = time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(pixels)
        images += len(pixels)
    return (time.process_time() - cpu) / images
