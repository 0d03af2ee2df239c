"""`nearcat bench {embed,serve,reindex,index,store}`: measured, printed as a table, saved as
JSON."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from embedder.config import DEFAULT_MODEL
from server.commands import write_json

EPILOG = """\
Each bench prints a table and, with --json FILE, writes every figure with the machine it ran
on. Numbers are comparable only on the same machine; docs/benchmarks.md records them.
"""


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number of `minimum` or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of {minimum} or more, got {text!r}"
            )
        return value

    return parse


at_least_one = at_least(1)


def run_store(args: argparse.Namespace) -> None:
    from server.bench.store import bench_store

    result = bench_store(sizes=args.sizes, dim=args.dim, queries=args.queries, k=args.k)
    write_json(result, args.json)


def run_index(args: argparse.Namespace) -> None:
    from server.bench.index import bench_index

    result = bench_index(
        sizes=args.sizes,
        dim=args.dim,
        queries=args.queries,
        k=args.k,
        nprobes=args.nprobe,
        ef_searches=args.ef_search,
    )
    write_json(result, args.json)


CLOTHING_CSV = Path(__file__).resolve().parents[2].parent / "shared/datasets/clothing/images.csv"


def run_embed(args: argparse.Namespace) -> None:
    from server.bench.embed import bench_embed

    result = bench_embed(
        args.model,
        args.models_dir,
        batches=args.batch,
        runtimes=args.runtime,
        seconds=args.seconds,
        device=args.device,
    )
    write_json(result, args.json)


def serve_images(args: argparse.Namespace) -> tuple[list[bytes], dict[str, list[bytes]]]:
    """Query images and references per category: from --data, else clothing, else generated."""
    from embedder.datasets import load_dataset

    source = args.data or (CLOTHING_CSV if CLOTHING_CSV.exists() else None)
    if source is None:
        from embedder.export import generated_images

        images = generated_images(count=64)
        return images[8:], {"generated-a": images[:4], "generated-b": images[4:8]}
    options = {"path_template": "images/{}.jpg"} if source == CLOTHING_CSV else {}
    dataset = load_dataset(Path(source), **options)
    references: dict[str, list[bytes]] = {}
    queries: list[bytes] = []
    for category, labeled in sorted(dataset.by_category().items())[: args.categories]:
        references[category] = [i.path.read_bytes() for i in labeled[: args.references]]
        queries += [i.path.read_bytes() for i in labeled[args.references : args.references + 20]]
    return queries, references


def run_serve(args: argparse.Namespace) -> None:
    from server.bench.serve import bench_serve

    queries, references = serve_images(args)
    result = bench_serve(
        args.model,
        args.models_dir,
        queries,
        references,
        clients=args.clients,
        seconds=args.seconds,
        images_per_call=args.images_per_call,
        server_args=args.server_arg,
        runtime=args.runtime,
        device=args.device,
        model_workers=args.model_workers,
    )
    result["queries"] = len(queries)
    write_json(result, args.json)


def run_reindex(args: argparse.Namespace) -> None:
    from server.bench.reindex import bench_reindex

    _, references = serve_images(args)
    result = bench_reindex(
        args.model,
        args.models_dir,
        references,
        ray_workers=args.ray_workers,
        ray_cpus_per_worker=args.ray_cpus_per_worker,
        ray_address=args.ray_address,
        repeats=args.repeats,
        batch=args.batch,
        runtime=args.runtime,
        device=args.device,
    )
    write_json(result, args.json)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = commands.add_parser(
        "bench",
        help="measure speed: model, whole server, vector index",
        description="Measure speed on this machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")

    embed = kinds.add_parser(
        "embed",
        help="model-only images/s per runtime and batch, against GEMM speed",
        description="Model-only images/s at each batch size for PyTorch and ONNX Runtime, the "
        "model's GFLOP per image, and in the same run a float32 GEMM measurement; "
        "compute_ratio = images/s x GFLOP per image / GEMM GFLOP/s.",
    )
    embed.add_argument("--model", default=DEFAULT_MODEL, help="name or artifact dir")
    embed.add_argument("--models-dir", type=Path, default=Path("var/models"))
    embed.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    embed.add_argument("--runtime", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    embed.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    embed.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: PyTorch in fp32/fp16/bf16, with and without channels_last, and ONNX "
        "Runtime's CUDA provider if installed; GEMM in fp32 and bf16 on the GPU",
    )
    embed.add_argument("--json", type=Path, help="write the results here")
    embed.set_defaults(run=run_embed)

    serve = kinds.add_parser(
        "serve",
        help="end-to-end Classify throughput and latency of a real server",
        description="Starts a server with an embedded store in a temporary dir, adds "
        "references, drives it with N concurrent clients for T seconds, then one client for "
        "batch-1 latency. e2e_ratio = end-to-end images/s / model-only batch-32 images/s "
        "measured in the same run. Images: --data, else ../shared/datasets/clothing, else "
        "generated.",
    )
    serve.add_argument("--model", default=DEFAULT_MODEL, help="name or artifact dir")
    serve.add_argument("--models-dir", type=Path, default=Path("var/models"))
    serve.add_argument("--data", type=Path, help="folder tree or CSV of images")
    serve.add_argument("--categories", type=int, default=10, help="categories to add")
    serve.add_argument("--references", type=int, default=5, help="references per category")
    serve.add_argument("--clients", type=at_least_one, default=8, help="concurrent clients")
    serve.add_argument("--seconds", type=float, default=20.0, help="length of the load run")
    serve.add_argument(
        "--images-per-call",
        type=at_least_one,
        default=1,
        metavar="N",
        help="1: each client sends Classify calls of one image (the default); N > 1: "
        "ClassifyBatch calls of N images, as a service sending a burst would",
    )
    serve.add_argument(
        "--runtime",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="the server's and the model-only measurement's runtime (as `nearcat serve`)",
    )
    serve.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where both run the model, e.g. cuda with --runtime torch on a GPU machine",
    )
    serve.add_argument(
        "--model-workers",
        type=at_least(0),
        default=0,
        metavar="N",
        help="the server's --model-workers (0: its default); the model-only measurement runs "
        "the model the same way, N runs side by side on their share of the cores",
    )
    serve.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `nearcat serve` flag, e.g. --server-arg=--max-batch=16 (repeatable)",
    )
    serve.add_argument("--json", type=Path, help="write the results here")
    serve.set_defaults(run=run_serve)

    reindex = kinds.add_parser(
        "reindex",
        help="reindex images/s: in process against Ray with N workers",
        description="Starts a server with an embedded store in a temporary dir, adds "
        "references, then re-embeds them all again and again (the same model under a fresh "
        "version each time, validation off), in process and on Ray with each --ray-workers, "
        "taking turns. images_per_s counts from the request to the last vector stored; "
        "steady_images_per_s from the first batch stored (workers up). Without "
        "--ray-address a Ray cluster is started on this machine for the bench. Images: "
        "--data, else ../shared/datasets/clothing, else generated. Needs nearcat[ray].",
    )
    reindex.add_argument("--model", default=DEFAULT_MODEL, help="name or artifact dir")
    reindex.add_argument("--models-dir", type=Path, default=Path("var/models"))
    reindex.add_argument("--data", type=Path, help="folder tree or CSV of images")
    reindex.add_argument("--categories", type=int, default=10, help="categories to add")
    reindex.add_argument("--references", type=int, default=40, help="references per category")
    reindex.add_argument(
        "--ray-workers", type=at_least_one, nargs="*", default=[1, 2], help="worker counts"
    )
    reindex.add_argument("--ray-cpus-per-worker", type=float, default=1.0)
    reindex.add_argument("--ray-address", help="a running cluster (default: start one here)")
    reindex.add_argument("--repeats", type=at_least_one, default=3, help="runs per engine")
    reindex.add_argument(
        "--batch", type=at_least_one, default=32, help="the server's --reindex-batch"
    )
    reindex.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto")
    reindex.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    reindex.add_argument("--json", type=Path, help="write the results here")
    reindex.set_defaults(run=run_reindex)

    index = kinds.add_parser(
        "index",
        help="flat vs IVF vs HNSW: build time, memory, queries/s, recall@k",
        description="Flat vs IVF vs HNSW on synthetic catalogue vectors: build time, memory, "
        "queries/s (in batches of 32, as the server searches), recall@k against flat, and the "
        "time from add until a new vector is found. 1M vectors of dimension 512 need about "
        "6 GB of memory and several minutes.",
    )
    index.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="vectors"
    )
    index.add_argument("--dim", type=int, default=512, help="vector dimension")
    index.add_argument("--queries", type=int, default=500, help="queries per measurement")
    index.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    index.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    index.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    index.add_argument("--json", type=Path, help="write the results here")
    index.set_defaults(run=run_index)

    store = kinds.add_parser(
        "store",
        help="Redis memory per reference, start-up load time, float16's recall cost",
        description="Writes synthetic references through the real store (an embedded Valkey "
        "in a temporary directory, images to a blob directory) with float32 and with float16 "
        "vectors, then loads them as a starting server does. Reports Redis memory per "
        "reference, the load time, recall@k of float16 against float32, and both "
        "extrapolated to 1M references. 100k references take a few minutes.",
    )
    store.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="references")
    store.add_argument("--dim", type=int, default=512, help="vector dimension")
    store.add_argument("--queries", type=int, default=500, help="queries for recall@k")
    store.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    store.add_argument("--json", type=Path, help="write the results here")
    store.set_defaults(run=run_store)
