"""Operating a running server: `status`, and moving it between model versions (`reindex`,
`rollback`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from server.commands import CommandError
from server.commands.client import client_command, connect, read_file

REINDEX_POLL_SECONDS = 0.5


def register_status(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "status",
        "show what the server runs",
        "Model version, index size and counters as JSON.",
    )
    parser.set_defaults(run=cmd_status)


def cmd_status(args: argparse.Namespace) -> None:
    from google.protobuf.json_format import MessageToDict

    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    status = connect(args).GetStatus(pb.GetStatusRequest())
    audit = status.review.audit
    if audit.below_target:
        guard = " Auto-accepting is stopped (--audit-guard)." if audit.guard_active else ""
        print(
            f"WARNING: the auto-accept band is below target: {audit.right} of {audit.reviewed} "
            f"audited answers right, lower bound {audit.lower:.3f} < {audit.target:.3f}.{guard}",
            file=sys.stderr,
        )
    fields = MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    print(json.dumps(_int64_as_numbers(fields, status.DESCRIPTOR), indent=2))


def _int64_as_numbers(fields: dict[str, Any], descriptor: Any) -> dict[str, Any]:
    """Protobuf's JSON writes 64-bit integers as strings ("index_size": "15"), for
    JavaScript's sake; people and Python scripts want numbers."""
    from google.protobuf.descriptor import FieldDescriptor as Field

    wide = {Field.TYPE_INT64, Field.TYPE_UINT64, Field.TYPE_SINT64, Field.TYPE_FIXED64}
    for field in descriptor.fields:
        value = fields.get(field.name)
        if field.type in wide and isinstance(value, str):
            fields[field.name] = int(value)
        elif field.message_type is not None and isinstance(value, dict):
            _int64_as_numbers(value, field.message_type)
    return fields


def register_reindex(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "reindex",
        "re-embed every reference with another model and switch to it",
        "Tell the server to re-embed every stored reference with model NEW in the background "
        "(batched, resumable: a server killed meanwhile continues on its next start), "
        "validate it by the top-1 of the answer each version would serve on the same honest "
        "examples (the labelled photos, else leave-one-shoot-out over the references; "
        "refusing to switch when it drops by more than --max-accuracy-drop), then switch "
        "atomically. Classify "
        "keeps answering all along. Shows a progress bar until it ends; exits 1 unless it "
        "switched. `nearcat rollback` goes back.",
    )
    parser.add_argument(
        "--model",
        metavar="NEW",
        help="model artifact directory on the server's machine, registered model name, or "
        "a version in the server's registry",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="F",
        help="refuse when accuracy falls by more than F (0.02: two points; default: the "
        "server's --reindex-max-accuracy-drop)",
    )
    parser.add_argument(
        "--no-validate", action="store_true", help="switch without measuring accuracy"
    )
    parser.add_argument(
        "--metrics",
        metavar="JSON",
        help="a JSON file (e.g. from `nearcat eval --json`) kept with the version in the "
        "server's model registry",
    )
    parser.add_argument(
        "--engine",
        choices=["in-process", "ray"],
        help="what embeds the references: in-process (the default: the server's own model "
        "worker) or ray (model workers on a Ray cluster; the server needs "
        "`pip install 'nearcat[ray]'`; docs/ray.md)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: the cluster, HOST:PORT or ray://HOST:PORT, 'auto' (one "
        "running on the server's machine) or 'local' (start one there); default: "
        "RAY_ADDRESS on the server, else one running there, else a new one there",
    )
    parser.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="with --engine ray: model workers, each loading the model once (default 2)",
    )
    parser.add_argument(
        "--ray-cpus-per-worker",
        type=float,
        metavar="C",
        help="with --engine ray: CPUs each worker reserves and runs the model on (default 1)",
    )
    parser.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        metavar="G",
        help="with --engine ray: GPUs each worker reserves, fractions share one; above 0 the "
        "model runs on the GPU (default: 1 when the server runs with --device cuda, else 0)",
    )
    parser.add_argument("--no-wait", dest="wait", action="store_false", help="start it and return")
    parser.add_argument(
        "--status", action="store_true", help="show the running or last reindex and exit"
    )
    parser.set_defaults(run=cmd_reindex)


def cmd_reindex(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    stub = connect(args)
    if args.status:
        status = stub.GetReindexStatus(pb.GetReindexStatusRequest())
        print(describe_reindex(status))
        return
    if not args.model:
        raise CommandError("give --model NEW (or --status to see the last reindex)")
    request = pb.ReindexRequest(
        model=args.model,
        skip_validation=args.no_validate,
        engine=args.engine or "",
        ray_address=args.ray_address or "",
        ray_workers=args.ray_workers or 0,
    )
    if args.max_accuracy_drop is not None:
        request.max_accuracy_drop = args.max_accuracy_drop
    if args.ray_cpus_per_worker is not None:
        request.ray_cpus_per_worker = args.ray_cpus_per_worker
    if args.ray_gpus_per_worker is not None:
        request.ray_gpus_per_worker = args.ray_gpus_per_worker
    if args.metrics:
        try:
            request.metrics_json = read_file(args.metrics).decode()
        except UnicodeDecodeError as exc:
            raise CommandError(f"{args.metrics} is not UTF-8 text: {exc}") from exc
    started = stub.Reindex(request)
    follow_reindex(stub, started, args.wait)


def register_rollback(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "rollback",
        "switch back to the previous model version",
        "Switch the server back to the model version served before the last reindex. Its "
        "vectors are still stored, so only references added since are embedded; no "
        "validation. Exits 1 unless it switched.",
    )
    parser.add_argument("--no-wait", dest="wait", action="store_false", help="start it and return")
    parser.set_defaults(run=cmd_rollback)


def cmd_rollback(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    stub = connect(args)
    follow_reindex(stub, stub.Rollback(pb.RollbackRequest()), args.wait)


def follow_reindex(stub: Any, status: Any, wait: bool) -> None:
    """Show a progress bar until the job ends; exit 1 unless it switched."""
    from tqdm import tqdm

    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    what = "rollback" if status.rollback else "reindex"
    print(f"{what} to {status.target_version} started (serving {status.active_version})")
    if not wait:
        print("follow it with `nearcat reindex --status`")
        return
    running = (pb.REINDEX_RUNNING, pb.REINDEX_VALIDATING)
    with tqdm(total=status.total or None, unit="ref", desc="embedding") as bar:
        while status.state in running:
            bar.total = status.total or bar.total
            bar.n = status.done
            stage = "validating" if status.state == pb.REINDEX_VALIDATING else "embedding"
            bar.set_description(stage, refresh=False)
            bar.refresh()  # once per poll
            time.sleep(REINDEX_POLL_SECONDS)
            status = stub.GetReindexStatus(pb.GetReindexStatusRequest())
        bar.n = status.done
        bar.refresh()
    print(describe_reindex(status))
    if status.state != pb.REINDEX_DONE:
        raise SystemExit(1)


def describe_reindex(status: Any) -> str:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    state = pb.ReindexState.Name(status.state).removeprefix("REINDEX_").lower()
    if status.state == pb.REINDEX_STATE_NONE:
        return f"no reindex yet; serving {status.active_version}"
    lines = [
        f"{'rollback' if status.rollback else 'reindex'} to {status.target_version}: {state} "
        f"({status.done} of {status.total} references"
        + (f", resumed at {status.resumed_from}" if status.resumed_from else "")
        + (f", embedded on {status.engine}" if status.engine not in ("", "in-process") else "")
        + ")",
        f"  serving {status.active_version}",
    ]
    if status.message:
        lines.append(f"  {status.message}")
    return "\n".join(lines)
