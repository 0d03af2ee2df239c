"""What a single-image Classify costs outside the model, at the least (docs/benchmarks.md,
"What the rest of the pipeline cannot go below").

Two measurements, CPU time by `resource.getrusage`, printed as JSON:
- gRPC alone: a no-op unary handler taking a 40 KB request (a clothing JPEG's size), the
  sync server and grpc.aio, each in its own process, 8 client threads in this one;
- decoding and preprocessing clothing JPEGs with the served model's own code, from 1 thread
  and from 8 at once.

    .venv/bin/python scripts/serving_floor.py --images ../shared/datasets/clothing/images
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REQUEST = os.urandom(40_000)
METHOD = "/floor.Floor/Nothing"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _handlers(handler: Any) -> Any:
    same = lambda data: data  # noqa: E731 - raw bytes in and out
    method = grpc.unary_unary_rpc_method_handler(handler, same, same)
    return grpc.method_handlers_generic_handler("floor.Floor", {"Nothing": method})


def _serve(kind: str, port: Any, stop: Any, cpu: Any) -> None:
    """A no-op server on a free port; reports its CPU seconds into `cpu` when stopped."""
    if kind == "sync":
        from concurrent import futures

        server = grpc.server(futures.ThreadPoolExecutor(16))
        server.add_generic_rpc_handlers([_handlers(lambda request, context: b"ok")])
        port.value = server.add_insecure_port("127.0.0.1:0")
        server.start()
        stop.wait()
        cpu.value = cpu_seconds()
        server.stop(0)
        return

    async def run() -> None:
        async def nothing(request: bytes, context: Any) -> bytes:
            return b"ok"

        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_handlers(nothing)])
        port.value = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        cpu.value = cpu_seconds()

    asyncio.run(run())


def grpc_cost(kind: str, seconds: float, clients: int) -> dict[str, float]:
    port, cpu, stop = mp.Value("i", 0), mp.Value("d", 0.0), mp.Event()
    server = mp.Process(target=_serve, args=(kind, port, stop, cpu))
    server.start()
    while not port.value:
        time.sleep(0.05)
    call = grpc.insecure_channel(f"127.0.0.1:{port.value}").unary_unary(METHOD)
    calls = [0] * clients
    end = time.monotonic() + seconds
    before = cpu_seconds()

    def client(n: int) -> None:
        while time.monotonic() < end:
            call(REQUEST)
            calls[n] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client_cpu = cpu_seconds() - before
    stop.set()
    server.join()
    total = sum(calls)
    return {
        "calls_per_s": round(total / seconds),
        "server_cpu_ms_per_call": round(cpu.value / total * 1000, 3),
        "client_cpu_ms_per_call": round(client_cpu / total * 1000, 3),
    }


def decode_cost(files: list[bytes], threads: int, seconds: float) -> dict[str, float]:
    from embedder.artifact import load_artifact, resolve_model

    embedder = load_artifact(resolve_model("efficientnet_lite0", Path("var/models")))
    done = [0] * threads
    end = time.monotonic() + seconds
    before = cpu_seconds()

    def work(n: int) -> None:
        while time.monotonic() < end:
            embedder.decode(files[done[n] % len(files)])
            done[n] += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = sum(done)
    return {
        "images_per_s": round(total / seconds),
        "cpu_ms_per_image": round((cpu_seconds() - before) / total * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEGs")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    files = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))[:200]]
    results = {
        "grpc_sync": grpc_cost("sync", args.seconds, args.clients),
        "grpc_aio": grpc_cost("aio", args.seconds, args.clients),
        "decode_1_thread": decode_cost(files, 1, args.seconds),
        f"decode_{args.clients}_threads": decode_cost(files, args.clients, args.seconds),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
