"""A reindex's embedding on a Ray cluster: `nearcat reindex --engine ray` (docs/ray.md).

A reindex embeds every reference once with the new model: hours on one server for a big
catalogue, on the same cores that answer Classify. This engine hands that work to a pool of
model workers (Ray actors in a Ray Data pipeline, each loading the model once, on CPUs or
GPUs) while the server only stores what comes back, batch by batch, through the same
`Catalog.fill` as the in-process reindex: the job is resumable, validated and switched
exactly as before, and only references still without a vector of the new version are sent.

Ray's driver runs in a child process of the server (`drive`), not in the server: a Ray
driver owns process-wide state (its shutdown resets the process's SIGTERM handler, so a
server would no longer stop gracefully), its C++ core writes to stderr, and a stop must not
wait for a cluster that is still starting. The child gets the job on stdin and sends the
vectors back on stdout; it stops when its stdin closes, so also when the server dies.

The workers read the images themselves from the blob store (indexer.blobs), given its URL
and each reference's key, so a cluster does not funnel every image through the server; a
worker that does not see the server's blob store (another directory, another bucket) fails
at once, by the store's id (indexer.blobs.MARKER), instead of finding no images.

The model travels as the artifact's files through Ray's object store, not as a path: a
cluster's nodes seldom share the server's disk, the object store copies it once per node
rather than once per worker, and each worker verifies the files' checksums as it loads them
(`embedder.load_artifact`), so a torn or wrong copy fails loudly instead of embedding.

Ray is an optional extra; nothing here imports it until a Ray reindex runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from indexer.blobs import MARKER
from indexer.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from types import ModuleType

    from embedder import DecodeLimits
    from indexer.blobs import Blobs
    from indexer.store import Store
    from server.catalog import Batches
    from server.serving import Serving

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nearcat[ray]'"
DEFAULT_WORKERS = 2
# How often a wait for the workers looks at the stop flag: a server stopping mid-reindex
# must not wait for a cluster that is still starting (or cannot place a worker at all).
STOP_POLL_SECONDS = 0.2
DRIVER_COMMAND = [sys.executable, "-c", "from server.ray_engine import drive; drive()"]
# How long the workers may take to start: an autoscaling cluster adds nodes in minutes, but
# workers no node can hold (a GPU the cluster lacks) must fail the job, not stall it forever.
WORKERS_START_S = 600
BLOB_READERS = 16  # a worker's concurrent blob reads
BLOB_READ_TRIES = 3  # a blob store hiccup (an S3 5xx) must not fail an hours-long reindex
DRIVER_EXIT_SECONDS = 20.0  # for the driver to let go of the cluster when told; then SIGKILL


@dataclass(frozen=True)
class RayOptions:
    """Where and on what a Ray reindex runs. As requested, unset values are 0 / None;
    `resolved` fills them in, and a job records the resolved ones so that a resumed reindex
    runs as it began."""

    address: str = ""  # "" finds a cluster or starts one here; see ReindexRequest.ray_address
    workers: int = 0
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None

    def resolved(self, server_device: str) -> RayOptions:
        """The defaults filled in (GPU workers when the server itself runs on cuda), or
        InvalidArgument naming the value that cannot be used."""
        if self.workers < 0:
            raise InvalidArgument(f"ray_workers must be 1 or more, got {self.workers}")
        cpus = 1.0 if self.cpus_per_worker is None else self.cpus_per_worker
        if cpus <= 0:
            raise InvalidArgument(f"ray_cpus_per_worker must be above 0, got {cpus}")
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if server_device == "cuda" else 0.0
        if gpus < 0:
            raise InvalidArgument(f"ray_gpus_per_worker must be 0 or more, got {gpus}")
        workers = self.workers or DEFAULT_WORKERS
        return replace(self, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)

    @property
    def device(self) -> str:
        """Where a worker runs the model: on the GPU it reserved, else on its CPUs."""
        return "cuda" if self.gpus_per_worker else "cpu"

    def describe(self) -> str:
        gpus = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        where = self.address or "the default cluster"
        return f"{self.workers} workers of {self.cpus_per_worker or 1:g} CPU{gpus} on {where}"


def require_ray() -> ModuleType:
    """Ray with Ray Data, or FailedPrecondition saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401 - the pipeline; a bare `ray` lacks it
    except ImportError as exc:
        raise FailedPrecondition(
            f"the Ray engine needs Ray on the server, which cannot import it ({exc}): "
            f"{INSTALL_HINT} there, or reindex in process (leave out --engine)"
        ) from exc
    return ray


# -- in the server -------------------------------------------------------------------------


class RayEngine:
    """The Ray engine for `Catalog.fill` (see server.catalog.EmbedEngine): starts the
    driver for the job's length, hands it the references, and yields each batch of vectors
    as it comes back; the server stores one batch while the workers embed the next ones."""

    def __init__(
        self,
        options: RayOptions,
        artifact: Path,
        runtime: str,
        store: Store,
        stop: threading.Event | None = None,
    ) -> None:
        self.options = options
        self.artifact = artifact
        self.runtime = runtime
        self.store = store
        self.stop = stop or threading.Event()

    def __call__(
        self, serving: Serving, references: Sequence[tuple[str, str]], batch_size: int
    ) -> Batches:
        if not references:
            return  # nothing to embed: no cluster needed
        keys = self.store.image_keys([i for i, _ in references])  # removed ones left out
        blobs = self.store.blobs
        marker = blobs.get(MARKER)
        job = {
            "options": self.options,
            "artifact": str(self.artifact),
            "runtime": self.runtime,
            "limits": serving.embedder.limits,
            "batch_size": batch_size,
            "blobs": (blobs.url, marker.decode() if marker else ""),
            "rows": [{"id": i, "key": key} for i, key in keys.items()],
        }
        log.info("embedding %d references on Ray: %s", len(keys), self.options.describe())
        driver = subprocess.Popen(DRIVER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        # Bounded: when the server stores slower than the workers embed, the driver waits
        # (and Ray Data with it) instead of piling vectors up in the server's memory.
        results: queue.Queue[Any] = queue.Queue(maxsize=4)
        finished = threading.Event()
        reader = threading.Thread(
            target=_read_frames,
            args=(driver, job, results, finished),
            name="ray-driver",
            daemon=True,
        )
        reader.start()
        try:
            while not self.stop.is_set():
                try:
                    kind, *body = results.get(timeout=STOP_POLL_SECONDS)
                except queue.Empty:
                    continue
                if kind == "batch":
                    yield body[0], body[1]
                elif kind == "error":
                    raise FailedPrecondition(f"the Ray engine failed: {body[0]}")
                else:  # done
                    return
        finally:
            finished.set()
            _end(driver, reader)  # at once, or for a stop: the workers go with it


def _read_frames(
    driver: subprocess.Popen[bytes],
    job: dict[str, Any],
    results: queue.Queue[Any],
    finished: threading.Event,
) -> None:
    """Send the driver its job, then pass on what it answers: ("batch", ids, vectors)...,
    then ("done",) or ("error", message); an exit without either is an error too. Stops
    when the engine is `finished` with them."""
    assert driver.stdin is not None and driver.stdout is not None

    def put(frame: tuple[Any, ...]) -> bool:
        while not finished.is_set():
            try:
                results.put(frame, timeout=STOP_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    try:
        pickle.dump(job, driver.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        driver.stdin.flush()  # left open: closing it tells the driver to stop
        while put(frame := pickle.load(driver.stdout)) and frame[0] == "batch":
            pass
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        code = driver.wait()
        put(("error", f"its driver process exited with {code} (see the server's log)"))


def _end(driver: subprocess.Popen[bytes], reader: threading.Thread) -> None:
    """Tell the driver to stop, by closing its stdin (it leaves the cluster, whose workers
    then go), and reap it, killed when it does not exit in time; then its reader, which
    its exit ends."""
    with contextlib.suppress(OSError):  # a driver already gone
        if driver.stdin is not None:
            driver.stdin.close()
    try:
        driver.wait(DRIVER_EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("the Ray driver did not stop in %gs: killing it", DRIVER_EXIT_SECONDS)
        driver.kill()
        driver.wait()
    reader.join(DRIVER_EXIT_SECONDS)
    if driver.stdout is not None:
        driver.stdout.close()


# -- in the driver process -----------------------------------------------------------------


def drive() -> None:
    """The driver process: read the job from stdin, run the pipeline, write frames (see
    `_read_frames`) to stdout, until done or stdin closes. Anything else printed goes to
    stderr, the server's log."""
    _die_with_parent()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints (Ray's, a library's) must not corrupt the frames
    job = pickle.load(sys.stdin.buffer)
    running = threading.Event()
    running.set()
    threading.Thread(target=_stop_on_eof, args=(running,), daemon=True).start()
    ray = None
    try:
        ray = require_ray()
        _join(ray, job["options"])
        dataset = _pipeline(ray, job)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            ids = [str(i) for i in batch["id"]]
            if ids:
                _send(out, ("batch", ids, np.asarray(batch["vector"], dtype=np.float32)))
        _send(out, ("done",))
    except (KeyboardInterrupt, BrokenPipeError):  # told to stop, or the server is gone
        pass
    except Exception as exc:
        with contextlib.suppress(BrokenPipeError):
            _send(out, ("error", _reason(exc)))
    finally:
        running.clear()
        if ray is not None and ray.is_initialized():
            ray.shutdown()  # leaves the cluster (or stops the one it started)


def _stop_on_eof(running: threading.Event) -> None:
    """Interrupt the pipeline once stdin closes: the server is done with it, or gone."""
    sys.stdin.buffer.read()
    if running.is_set():
        import _thread

        _thread.interrupt_main()


def _die_with_parent() -> None:
    """SIGTERM this process when the server dies, should closing stdin not reach it (a
    pipeline that never checks for interrupts); Linux only."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _send(out: IO[bytes], frame: tuple[Any, ...]) -> None:
    pickle.dump(frame, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def _reason(exc: BaseException) -> str:
    """A failure as a person reads it: a worker's own error, not Ray's wrapping of it."""
    if isinstance(exc, FailedPrecondition):
        return str(exc)
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    if not lines:
        return repr(cause)
    # Ray quotes a worker's traceback, whose last line names the error's class first.
    return re.sub(r"^(?:[a-z_]\w*\.)+[A-Z]\w*: |^[A-Z]\w*(?:Error|Exception): ", "", lines[-1])


def _join(ray: ModuleType, options: RayOptions) -> None:
    try:
        ray.init(
            address=options.address or None,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,  # workers' output stays in the cluster's log files
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise FailedPrecondition(
            f"cannot join the Ray cluster {options.address or '(default)'}: {exc}; give "
            "--ray-address HOST:PORT of a running cluster, or 'local' to start one on the "
            "server's machine"
        ) from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # bars would garble the server's log
    context.print_on_execution_start = False
    context.wait_for_min_actors_s = WORKERS_START_S


def _pipeline(ray: ModuleType, job: dict[str, Any]) -> Any:
    """The references through a pool of model workers, `batch_size` at a time."""
    artifact = Path(job["artifact"])
    files = {p.name: p.read_bytes() for p in sorted(artifact.iterdir()) if p.is_file()}
    options: RayOptions = job["options"]
    return ray.data.from_items(job["rows"]).map_batches(
        EmbedWorker,
        fn_constructor_kwargs={
            "model": [ray.put(files)],  # in a list: each worker fetches it itself
            "runtime": job["runtime"],
            "device": options.device,
            "threads": max(1, int(options.cpus_per_worker or 1)),
            "limits": job["limits"],
            "blobs": job["blobs"],
        },
        batch_size=job["batch_size"],
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
    )


class EmbedWorker:
    """One model worker of the pipeline (a Ray actor): loads the model once, then, batch
    after batch, reads the images from the blob store and embeds them, as the server's own
    model worker would (same artifact, runtime and decoding limits).

    A batch's images are read `BLOB_READERS` at a time (an S3 GET waits tens of ms; one at
    a time would cap a worker at a few dozen images/s) and decoded on as many threads as
    the worker has CPUs: decoding a photo costs about as much CPU as the model on a CPU,
    and on a GPU it is the limit (some 280 images/s per core), so a GPU worker wants CPUs.
    """

    def __init__(
        self,
        model: list[Any],
        runtime: str,
        device: str,
        threads: int,
        limits: DecodeLimits,
        blobs: tuple[str, str],
    ) -> None:
        import ray

        from embedder import load_artifact

        self.blobs = _open_blobs(*blobs)
        self.readers = ThreadPoolExecutor(BLOB_READERS, thread_name_prefix="blob-read")
        self.decoders = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        files: dict[str, bytes] = ray.get(model[0])
        with tempfile.TemporaryDirectory(prefix="nearcat-model-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            # Loaded into memory (checksums verified), so the files can go at once.
            self.embedder = load_artifact(Path(tmp), limits, threads, runtime, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = self.readers.map(self._read, [str(key) for key in batch["key"]])
        # A reference removed since the job began has no image any more: left out.
        found = [(str(i), b) for i, b in zip(batch["id"], images, strict=True) if b is not None]
        ids = [i for i, _ in found]
        pixels = list(self.decoders.map(self._decode, found))
        if not pixels:
            vectors = np.zeros((0, self.embedder.dim), dtype=np.float32)
        else:
            vectors = self.embedder.embed_pixels(np.stack(pixels))
        return {"id": np.asarray(ids, dtype=object), "vector": vectors}

    def _decode(self, item: tuple[str, bytes]) -> np.ndarray:
        from embedder import ImageDecodeError

        reference_id, image = item
        try:
            return self.embedder.decode(image)
        except ImageDecodeError as exc:
            raise InvalidArgument(f"stored reference {reference_id}: {exc}") from exc

    def _read(self, key: str) -> bytes | None:
        for attempt in range(BLOB_READ_TRIES):
            try:
                return self.blobs.get(key)
            except Exception:  # an unreadable disk, an S3 error: try again, then fail
                if attempt == BLOB_READ_TRIES - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        return None


def _open_blobs(url: str, ident: str) -> Blobs:
    """The server's blob store, as this worker sees it; FailedPrecondition when it is not
    the same one (its id differs or is missing: a directory not shared at the same path on
    this node, another bucket, missing credentials)."""
    import socket

    from indexer.blobs import open_blobs

    where = f"Ray worker on {socket.gethostname()}"
    try:
        blobs = open_blobs(url)
        found = blobs.get(MARKER)
    except Exception as exc:
        raise FailedPrecondition(f"{where} cannot read the blob store {url}: {exc}") from exc
    if found is None or found.decode() != ident:
        raise FailedPrecondition(
            f"{where} does not see the server's blob store at {url} (its id "
            f"{'is missing' if found is None else 'differs'}): the workers must read the same "
            "images, from a directory shared at the same path on every node or an s3:// bucket"
        )
    return blobs
