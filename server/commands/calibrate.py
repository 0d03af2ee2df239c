"""`nearcat calibrate`: refit the confidence calibration, optionally on labelled photos first."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.commands.client import (
    GROUP_METADATA,
    IMPORT_BATCH,
    IMPORT_BATCH_BYTES,
    client_command,
    connect,
    import_batches,
)
from server.commands.sources import add_csv_arguments

if TYPE_CHECKING:
    from embedder.datasets import LabeledImage


def register_calibrate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "calibrate",
        "refit the confidence calibration and the auto-accept threshold",
        "Refit how shares become probabilities, the auto-accept threshold and the 'unknown' "
        "threshold on examples the catalogue has not seen, and store the result. With "
        "--labelled, photos a person labelled (not references) are stored first: from 100 "
        "of them on, they are what the fit uses. Without enough, each sampled reference is "
        "asked of the others outside its shoot (its near-duplicate shots, found by "
        "similarity, and its --group-by group). The auto-accept threshold must be earned: "
        "the answers above it must reach the server's --auto-accept-precision with "
        "--auto-accept-confidence; with too little evidence nothing is auto-accepted and "
        "this says how many labelled photos would help. `nearcat import` calibrates after "
        "every import.",
    )
    parser.add_argument(
        "--labelled",
        type=Path,
        metavar="SRC",
        help="labelled photos that are not references: a folder tree or a CSV (the CSV flags "
        "below apply); stored durably for the serving model version",
    )
    add_csv_arguments(parser)
    parser.add_argument(
        "--attribute-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="CSV column holding an attribute of each labelled photo (as for `nearcat "
        "import`): from 100 such photos on, the attributes' calibration fits on them "
        "instead of on references (repeatable)",
    )
    parser.add_argument(
        "--group-by",
        metavar="KEY",
        default=GROUP_METADATA,
        help="reference metadata key whose references must not vote for each other, so "
        "one sender's look-alike photos do not make the fit over-confident (default: "
        "%(default)r, where `nearcat import --group-column` stores it; references without "
        "the key are not grouped; '' for no grouping)",
    )
    parser.set_defaults(run=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> None:
    stub = connect(args)
    if args.labelled is not None:
        add_labelled(stub, args)
    calibrate(stub, args.group_by)


def add_labelled(stub: Any, args: argparse.Namespace) -> None:
    """Send the photos of `args.labelled` as labelled traffic; a bad one is left out and named."""
    import grpc
    from tqdm import tqdm

    from server.commands.sources import load_source
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    dataset = load_source(args.labelled, args, "--labelled")
    source = f"calibrate --labelled {args.labelled}"
    added, failed = 0, []

    def send(items: Sequence[tuple[LabeledImage, bytes]]) -> None:
        nonlocal added
        request = pb.AddLabelledRequest(
            images=[
                pb.LabelledImage(image=data, category=i.category, attributes=dict(i.attributes))
                for i, data in items
            ],
            source=source,
        )
        try:
            added += stub.AddLabelled(request).added
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            if len(items) == 1:
                failed.append((items[0][0].path, exc.details()))
                return
            for item in items:
                send([item])

    readable = ((image, image.path.read_bytes()) for image in dataset.images)
    with tqdm(total=len(dataset.images), unit="img", desc="labelled") as bar:
        for batch in import_batches(readable, IMPORT_BATCH, IMPORT_BATCH_BYTES):
            send(batch)
            bar.update(len(batch))
    for path, reason in failed:
        print(f"  left out {path}: {reason}", file=sys.stderr)
    print(f"stored {added} new labelled photos ({len(failed)} left out)")


def calibrate(stub: Any, group_by: str) -> None:
    import grpc

    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    try:
        fitted = stub.Calibrate(pb.CalibrateRequest(group_by_metadata=group_by)).calibration
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        print(f"not calibrated: {exc.details()}", file=sys.stderr)
        return
    print(
        f"calibrated on {fitted.source}: temperature {fitted.temperature:.3f}, "
        f"ECE {fitted.ece_before:.3f} -> {fitted.ece_after:.3f}, top-1 {fitted.accuracy:.1%}; "
        f"images whose nearest reference is below similarity {fitted.unknown_below:.3f} are "
        "called unknown"
    )
    if fitted.has_auto_accept:
        print(
            f"auto-accept from confidence {fitted.auto_accept_threshold:.4f}: "
            f"{fitted.accepted_share:.1%} of these images, precision at least "
            f"{fitted.precision_bound:.1%} ({fitted.bound_level:.0%} confidence; target "
            f"{fitted.target_precision:.0%})"
        )
    else:
        print(f"nothing will be auto-accepted: {fitted.no_auto_accept_reason}")
    for fit in fitted.attributes:
        print(
            f"attribute {fit.name}: temperature {fit.temperature:.3f}, right {fit.accuracy:.1%} "
            f"of {fit.examples} examples ({fit.source}), ECE {fit.ece_before:.3f} -> "
            f"{fit.ece_after:.3f}"
        )
