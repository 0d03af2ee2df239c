"""`nearcat bench {embed,serve,index}`: measured speed, printed as a table and saved as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EPILOG = """\
Each bench prints a table and, with --json FILE, writes every figure with the machine it ran
on. Numbers are comparable only on the same machine; docs/benchmarks.md records them.
"""


def write_json(result: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


def run_index(args: argparse.Namespace) -> None:
    from server.benchmarks import bench_index

    result = bench_index(
        sizes=args.sizes,
        dim=args.dim,
        queries=args.queries,
        k=args.k,
        nprobes=args.nprobe,
        ef_searches=args.ef_search,
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
