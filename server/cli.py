"""The `nearcat` command: serve, import reference images, classify, list categories.

A thin argparse layer: `serve` wires settings into `server.app`, the other commands are gRPC
clients of a running server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from server.commands import CommandError
from server.message_limit import CLIENT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from embedder.datasets import LabeledImage
    from server.settings import Settings

Item = TypeVar("Item")

# Modules under server/commands/ that add their own subcommands (train, eval, export, ...).
COMMAND_MODULES: list[str] = [
    "server.commands.evaluate",
    "server.commands.train",
    "server.commands.bench",
    "server.commands.export",
]

DEFAULT_SERVER = os.environ.get("NEARCAT_SERVER", "127.0.0.1:50051")
# What one message to or from the server may hold at most, here; the server has its own
# limit on what it receives (--max-message-bytes, 64 MiB by default), and a request over it
# gets advice on splitting it (server.message_limit).
MAX_MESSAGE_BYTES = CLIENT_MAX_MESSAGE_BYTES
IMPORT_BATCH = 16
# Bytes of images per AddReferences call: well under the message limit, whatever the photos.
IMPORT_BATCH_BYTES = MAX_MESSAGE_BYTES // 4
RATE_LIMIT_RETRIES = 20
CLASSIFY_BATCH = 32
GROUP_METADATA = "group"  # reference metadata key that `import` stores a CSV's group in
# nearcat.v1.Decision numbers -> names, without importing the generated code at start-up
DECISIONS = {0: "unspecified", 1: "auto_accept", 2: "flag", 3: "review", 4: "unknown"}

EPILOG = """\
examples:
  nearcat serve                                  # embedded store under ./var, port 50051
  nearcat import photos/                         # photos/<category>/*.jpg, nested = parents
  nearcat import data/images.csv --path-template 'images/{}.jpg'
  nearcat classify shoe.jpg shirt.png --json
  nearcat categories
  nearcat add-references Shoes new1.jpg new2.jpg # more examples for a category
  nearcat show-category Shoes                    # its reference images, with their ids
  nearcat remove-references 5d41402abc4b2a76     # a wrong example out again
  nearcat delete-category "Straw hats" --yes
  nearcat calibrate --labelled checked/          # photos a person labelled: the honest evidence
  nearcat calibrate                              # refit on what is stored (import does it)
  nearcat add-category "Straw hats" --prompt "a photo of a straw hat"   # classifiable at once
  nearcat zero-shot photo.jpg --label sneakers --label boots
  nearcat search "red sneakers"
  nearcat reindex --model /srv/models/v2         # re-embed, validate, switch; Classify answers
  nearcat rollback                               # back to the previous model version
"""


# -- serve ---------------------------------------------------------------------------------


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, so flags, env vars and docs never drift apart."""
    from server.settings import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        switch = field.annotation is bool  # a value, not a bare switch: env vars read alike
        default = str(field.default).lower() if switch else field.default
        shown = "" if field.default is None else f"default: {default}; "
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            metavar="true|false" if switch else None,
            help=f"{field.description} ({shown}env NEARCAT_{name.upper()})",
        )


def load_settings(args: argparse.Namespace) -> Settings:
    """Flags given on the command line win over NEARCAT_* variables, which win over defaults."""
    from pydantic import ValidationError

    from server.settings import Settings

    overrides = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            _setting_name(str(e["loc"][0])) + f": {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise CommandError(f"invalid setting: {problems}") from None


def _setting_name(field: str) -> str:
    """A setting as a person may have given it: the flag, or its environment variable."""
    return f"--{field.replace('_', '-')} (or NEARCAT_{field.upper()})"


def cmd_serve(args: argparse.Namespace) -> None:
    from embedder import ArtifactError
    from indexer.store import BlobStoreMismatch
    from server.app import PortInUse, StoreUnreachable, serve
    from server.auth import TokenError
    from server.logging_setup import configure_logging
    from server.tls import TlsError

    settings = load_settings(args)
    configure_logging(settings.log_format, args.verbose)
    try:
        serve(settings, announce=lambda line: print(line, flush=True))
    except ArtifactError as exc:  # e.g. a model file that fails its checksum
        raise CommandError(f"cannot serve the model: {exc}") from exc
    except (TokenError, TlsError, PortInUse, StoreUnreachable, BlobStoreMismatch) as exc:
        raise CommandError(str(exc)) from exc


# -- client helpers ------------------------------------------------------------------------


def connect(args: argparse.Namespace) -> Any:
    """A stub for the server at --server (over TLS and with a token when asked), after
    checking it answers."""
    import grpc

    from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
    from server.tls import TlsError, channel_credentials

    target = args.server
    if ":" not in target:
        raise CommandError(f"--server {target} has no port: give HOST:PORT, e.g. {target}:50051")
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key
    if tls:
        try:
            credentials = channel_credentials(
                _path(args.tls_ca), _path(args.tls_cert), _path(args.tls_key)
            )
        except TlsError as exc:
            raise CommandError(str(exc)) from exc
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
    except grpc.FutureTimeoutError:
        hint = (
            "check --tls-ca (and for mutual TLS --tls-cert/--tls-key) match the server's, "
            "or drop the TLS flags if it serves without TLS"
            if tls
            else "if it serves TLS, pass --tls or --tls-ca"
        )
        raise CommandError(
            f"cannot reach a nearcat server at {target}: start one with `nearcat serve`, "
            f"or point --server (or NEARCAT_SERVER) at a running one; {hint}"
        ) from None
    if args.token:
        channel = _with_token(channel, args.token)
    return pb_grpc.NearcatStub(_waiting_out_rate_limits(channel))


def _waiting_out_rate_limits(channel: Any) -> Any:
    """The channel, sending a rate-limited call again after the wait the server names (its
    retry-after-ms), a few times: a long import slows down instead of failing half-way."""
    import grpc

    class WaitOutRateLimit(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            for _ in range(RATE_LIMIT_RETRIES):
                outcome = continuation(details, request)
                if outcome.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return outcome
                wait_ms = _retry_after_ms(outcome)
                if wait_ms is None:  # exhausted otherwise, e.g. a message too large
                    return outcome
                time.sleep(wait_ms / 1000)
            return continuation(details, request)  # the last try, whatever it answers

    return grpc.intercept_channel(channel, WaitOutRateLimit())


def _retry_after_ms(call: Any) -> int | None:
    """The wait a rate-limited call's trailing metadata asks for, if any."""
    from server.ratelimit import RETRY_AFTER_KEY

    for key, value in call.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            return int(value)
    return None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _with_token(channel: Any, token: str) -> Any:
    """The channel, sending 'authorization: Bearer TOKEN' with every call."""
    import grpc

    class BearerToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
            return continuation(details._replace(metadata=metadata), request)

    return grpc.intercept_channel(channel, BearerToken())


def read_file(path: str | Path) -> bytes:
    """The file's bytes, or a CommandError that names it and says why not."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc


# -- import --------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> None:
    """Every file is accounted for: added, already there, skipped (not an image nearcat
    reads: listed before the import starts) or failed (unreadable, or refused by the server:
    listed as it goes, and the exit status is 1)."""
    import grpc
    from tqdm import tqdm

    from server.commands.sources import load_source
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    dataset = load_source(args.source, args, show_skipped=None)

    stub = connect(args)
    counts: Counter[str] = Counter()
    groups = dataset.by_category()
    with _resumable(args.server, counts, len(dataset.images)):
        existing = {c.name for c in stub.ListCategories(pb.ListCategoriesRequest()).categories}
        created = [name for name in dataset.categories() if name not in existing]
        for name in created:
            request = pb.AddCategoryRequest(name=name, parent=dataset.parents[name] or "")
            stub.AddCategory(request)
        note_case_twins(stub, created, existing | set(created))
        with tqdm(total=len(dataset.images), unit="img", desc="importing") as bar:
            for category, images in groups.items():
                request = pb.GetCategoryRequest(name=category, include_references=True)
                stored_ids = {r.id for r in stub.GetCategory(request).references}
                new = new_images(images, category, stored_ids, counts, bar)
                for batch in import_batches(new, args.batch_size, IMPORT_BATCH_BYTES):
                    ok, bad = send_references(stub, category, batch)
                    counts["added"] += ok
                    counts["failed"] += len(bad)
                    for path, reason in bad:
                        tqdm.write(f"failed {path}: {reason}", file=sys.stderr)
                    bar.update(len(batch))
    added, stored, failed = counts["added"], counts["stored"], counts["failed"]
    skipped = f"{len(dataset.skipped)} skipped (listed above), " if dataset.skipped else ""
    print(
        f"imported {added} new references into {len(groups)} categories; "
        f"{stored} already there, {skipped}{failed} failed"
    )
    if args.calibrate and added:
        grouped = any(image.group is not None for image in dataset.images)
        try:
            calibrate(stub, GROUP_METADATA if grouped else "")
        except grpc.RpcError as exc:
            stopped = stopped_answering(exc, args.server)
            if stopped is None:
                raise
            raise CommandError(
                f"the images are stored, but {stopped} before calibrating: once it answers "
                "again, run `nearcat calibrate`"
            ) from None
    if failed:
        print(
            f"nearcat: {failed} file{'s' if failed != 1 else ''} could not be added (listed "
            "above as failed): fix or remove them, then run the same command again; images "
            "already stored are skipped",
            file=sys.stderr,
        )
        raise SystemExit(1)


def stopped_answering(exc: Any, server: str) -> str | None:
    """What happened, for a person, when a call failed because the server went away (or
    lost its store) or did not answer in time; None for any other failure."""
    import grpc

    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the server at {server} went away or lost its store (UNAVAILABLE: {exc.details()})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {server} did not answer in time (DEADLINE_EXCEEDED: {exc.details()})"
    return None


@contextmanager
def _resumable(server: str, counts: Counter[str], total: int) -> Iterator[None]:
    """Around an import's calls: a server that stops answering part-way ends the import with
    how far it got and how to go on (re-running resumes: what is stored is skipped)."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        stopped = stopped_answering(exc, server)
        if stopped is None:
            raise
        done = counts["added"] + counts["stored"] + counts["failed"]
        raise CommandError(
            f"{stopped} after {done} of {total} images ({counts['added']} added): once "
            "it answers again, run the same command again: images already stored are "
            "skipped, so the import resumes where it stopped"
        ) from None


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


# -- text ----------------------------------------------------------------------------------


def cmd_add_category(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    references = _file_references(args.images)
    request = pb.AddCategoryRequest(
        name=args.name, parent=args.parent or "", prompts=args.prompt, references=references
    )
    stub = connect(args)
    within = _within_message_limit(
        "AddCategory",
        [r.image for r in references],
        "create the category with the first of them, then add the rest with "
        "`nearcat add-references`, a group at a time",
    )
    with _bad_image_named(args.images), within:
        category = stub.AddCategory(request).category
    what = [_reference_images(category.reference_count)]
    if category.prompts:
        what.append(f"prompts: {'; '.join(category.prompts)}")
    print(f"added {' > '.join(category.path)} ({', '.join(what)})")
    note_case_twins(stub, [category.name])


def cmd_update_category(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    request = pb.UpdateCategoryRequest(name=args.name)
    if args.rename is not None:
        request.new_name = args.rename
    if args.parent is not None:
        request.parent = args.parent
    if args.prompt is not None:
        request.set_prompts = True
        request.prompts.extend(p for p in args.prompt if p)
    if args.metadata is not None:
        request.set_metadata = True
        for entry in args.metadata:
            key, sep, value = entry.partition("=")
            if not sep:
                raise CommandError(f"--metadata {entry!r}: expected KEY=VALUE")
            request.metadata[key] = value
    stub = connect(args)
    category = stub.UpdateCategory(request).category
    what = [_reference_images(category.reference_count)]
    if category.prompts:
        what.append(f"prompts: {'; '.join(category.prompts)}")
    print(f"updated {' > '.join(category.path)} ({', '.join(what)})")
    if args.rename is not None:
        note_case_twins(stub, [category.name])


def note_case_twins(stub: Any, created: Sequence[str], names: Iterable[str] = ()) -> None:
    """A note on stderr for each category just created (or renamed) whose name differs only
    in case from another's (the server logs it too; its answers have no field for it).
    `names`: every category's name, when the caller has them; else they are listed."""
    from indexer.names import case_twin_warning, case_twins
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    names = list(names)
    if not names:
        names = [c.name for c in stub.ListCategories(pb.ListCategoriesRequest()).categories]
    for name in created:
        twins = case_twins(name, names)
        if twins:
            print(f"note: {case_twin_warning(name, twins)}", file=sys.stderr)


def cmd_zero_shot(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    image = read_file(args.image)
    ranked = connect(args).ZeroShot(pb.ZeroShotRequest(image=image, labels=args.label)).labels
    for item in ranked:
        print(f"{item.score:6.3f}  {item.label}")


def cmd_search(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    request = pb.SearchByTextRequest(text=args.text, top_n=args.top_n, k=args.k)
    found = connect(args).SearchByText(request)
    print("categories (text similarity):")
    for c in found.categories:
        print(f"  {c.score:6.3f}  {' > '.join(c.path)}")
    if found.references:
        print("nearest reference images:")
        for r in found.references:
            print(f"  {r.similarity:6.3f}  {r.category}  {r.reference_id}")


def new_images(
    images: Sequence[LabeledImage],
    category: str,
    stored_ids: set[str],
    counts: Counter[str],
    bar: Any,
) -> Iterator[tuple[LabeledImage, bytes]]:
    """The images not stored yet, with their bytes. An unreadable file is reported and
    counted as failed (a long import goes on); one already stored is counted and skipped."""
    from tqdm import tqdm

    from indexer.ids import image_sha256, reference_id

    for image in images:
        try:
            data = image.path.read_bytes()
        except OSError as exc:
            tqdm.write(f"failed {image.path}: cannot read it ({exc.strerror})", sys.stderr)
            counts["failed"] += 1
            bar.update(1)
            continue
        if reference_id(category, image_sha256(data)) in stored_ids:
            counts["stored"] += 1
            bar.update(1)
            continue
        yield image, data


def import_batches(
    items: Iterable[tuple[Item, bytes]], max_images: int, max_bytes: int
) -> Iterator[list[tuple[Item, bytes]]]:
    """Consecutive batches of at most `max_images` images and (unless one image alone is
    larger) `max_bytes` bytes: a folder of big photos must not exceed the message limit."""
    batch: list[tuple[Item, bytes]] = []
    size = 0
    for image, data in items:
        if batch and (len(batch) >= max_images or size + len(data) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((image, data))
        size += len(data)
    if batch:
        yield batch


def send_references(
    stub: Any, category: str, batch: Sequence[tuple[LabeledImage, bytes]]
) -> tuple[int, list[tuple[Path, str]]]:
    """Send a batch; if the server refuses it (one bad image fails a batch whole, or the
    batch is too big), send the images one by one so only the bad ones are left out.
    Returns (added, [(path, reason)])."""
    import grpc

    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    def request(items: Sequence[tuple[LabeledImage, bytes]]) -> Any:
        return pb.AddReferencesRequest(
            category=category,
            references=[
                pb.ReferenceImage(
                    image=data, metadata=_metadata(image), attributes=dict(image.attributes)
                )
                for image, data in items
            ],
        )

    try:
        return stub.AddReferences(request(batch)).added, []
    except grpc.RpcError as exc:
        limited = _retry_after_ms(exc) is not None
        too_large = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not limited
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT and not too_large:
            raise  # a rate limit that outlasted the waits, too, ends the import
        if len(batch) == 1:
            from server.message_limit import advice

            data = batch[0][1]
            return 0, [(batch[0][0].path, advice(exc.details(), "", [len(data)]) or exc.details())]
    results = [send_references(stub, category, [item]) for item in batch]
    return sum(added for added, _ in results), [bad for _, bads in results for bad in bads]


def _metadata(image: LabeledImage) -> dict[str, str]:
    """Where the reference came from, and its group (e.g. sender), which calibration uses."""
    metadata = {"source": str(image.path)}
    if image.group is not None:
        metadata[GROUP_METADATA] = image.group
    return metadata


# -- classify ------------------------------------------------------------------------------


def cmd_classify(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    stub = connect(args)
    options = pb.ClassifyOptions(top_n=args.top_n, within=args.within)
    exit_code = 0
    files = ((path, read_file(path)) for path in args.files)
    for batch in import_batches(files, CLASSIFY_BATCH, IMPORT_BATCH_BYTES):
        paths = [path for path, _ in batch]
        images = [image for _, image in batch]
        request = pb.ClassifyBatchRequest(images=images, options=options)
        with _within_message_limit("ClassifyBatch", images):
            response = stub.ClassifyBatch(request)
        for path, item in zip(paths, response.results, strict=True):
            if item.HasField("error"):
                exit_code = 1
            print_result(path, item, response.model_version, args.json)
    if exit_code:
        raise SystemExit(exit_code)


def print_result(path: str, item: Any, model_version: str, as_json: bool) -> None:
    if item.HasField("error"):
        if as_json:
            error = {"code": item.error.code, "message": item.error.message}
            print(json.dumps({"file": path, "error": error}))
        else:
            print(f"{path}: error {item.error.code}: {item.error.message}")
        return
    result = item.classification
    if as_json:
        print(
            json.dumps(
                {
                    "file": path,
                    "model_version": model_version,
                    "decision": DECISIONS[result.decision],
                    "confidence": round(result.confidence, 4),
                    "attributes": {
                        a.name: {v.value: round(v.probability, 4) for v in a.values}
                        for a in result.attributes
                    },
                    "levels": [
                        {"depth": lv.depth, "category": lv.category, "score": round(lv.score, 4)}
                        for lv in result.levels
                    ],
                    "confident_ancestor": (
                        result.confident_ancestor.category
                        if result.HasField("confident_ancestor")
                        else None
                    ),
                    "categories": [
                        {"category": c.category, "score": round(c.score, 4), "path": list(c.path)}
                        for c in result.categories
                    ],
                    "neighbors": [
                        {
                            "reference_id": n.reference_id,
                            "category": n.category,
                            "similarity": round(n.similarity, 4),
                        }
                        for n in result.neighbors
                    ],
                }
            )
        )
        return
    decision = DECISIONS[result.decision].replace("_", "-")
    if not result.categories:  # no reference near enough to say anything
        print(f"{path}: no category ({decision})")
        return
    best = result.categories[0]
    # The decision follows the confidence: the answer's probability (indexer/answer.py).
    print(f"{path}: {' > '.join(best.path)}  ({best.score:.2f}, {decision})")
    if result.HasField("confident_ancestor"):
        ancestor = result.confident_ancestor
        print(
            f"    sure of its parent {ancestor.category} ({ancestor.score:.2f}), "
            "less of the category itself"
        )
    for other in result.categories[1:]:
        print(f"    {' > '.join(other.path)}  ({other.score:.2f})")
    for attribute in result.attributes:
        values = ", ".join(f"{v.value} {v.probability:.2f}" for v in attribute.values[:3])
        print(f"    {attribute.name}: {values}  ({attribute.voters} of the neighbours say)")


# -- categories and status -----------------------------------------------------------------


def cmd_categories(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    categories = connect(args).ListCategories(pb.ListCategoriesRequest()).categories
    if args.json:
        for c in categories:
            print(json.dumps(_category_fields(c)))
        return
    if not categories:
        print("no categories yet: add some with `nearcat import FOLDER`")
        return
    width = max(len(" > ".join(c.path)) for c in categories)
    for c in sorted(categories, key=lambda c: list(c.path)):
        prompts = f"  prompts: {'; '.join(c.prompts)}" if c.prompts else ""
        print(f"{' > '.join(c.path):<{width}}  {c.reference_count:>6} references{prompts}")


def _category_fields(category: Any) -> dict[str, Any]:
    return {
        "name": category.name,
        "parent": category.parent or None,
        "path": list(category.path),
        "reference_count": category.reference_count,
        "metadata": dict(category.metadata),
        "prompts": list(category.prompts),
        "created_at_ms": category.created_at_ms,
    }


def cmd_show_category(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    request = pb.GetCategoryRequest(name=args.name, include_references=True)
    answer = connect(args).GetCategory(request)
    category, references = answer.category, answer.references
    if args.json:
        listed = [
            {
                "id": r.id,
                "sha256": r.sha256,
                "metadata": dict(r.metadata),
                "created_at_ms": r.created_at_ms,
            }
            for r in references
        ]
        print(json.dumps({**_category_fields(category), "references": listed}))
        return
    print(" > ".join(category.path))
    count = _reference_images(category.reference_count)
    print(f"  created {_when(category.created_at_ms)}, {count}")
    if category.prompts:
        print(f"  prompts: {'; '.join(category.prompts)}")
    for key, value in sorted(category.metadata.items()):
        print(f"  {key}: {value}")
    for r in sorted(references, key=lambda r: r.created_at_ms):
        print(f"  {r.id}  {_when(r.created_at_ms)}  {r.metadata.get('source', '')}".rstrip())
    if references:
        print("remove a wrong one with `nearcat remove-references ID`")


def _reference_images(count: int) -> str:
    return f"{count} reference image{'' if count == 1 else 's'}"


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def cmd_add_references(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    references = _file_references(args.images)
    request = pb.AddReferencesRequest(category=args.category, references=references)
    within = _within_message_limit(
        "AddReferences",
        [r.image for r in references],
        "run `nearcat add-references` once per group",
    )
    with _bad_image_named(args.images), within:
        answer = connect(args).AddReferences(request)
    for path, added in zip(args.images, answer.references, strict=True):
        if added.duplicate:
            print(f"{path}: already a reference of {args.category} ({added.reference_id})")
    print(
        f"added {_reference_images(answer.added)} to {' > '.join(answer.category.path)}, "
        f"which now has {answer.category.reference_count}"
    )


def _file_references(paths: Sequence[str]) -> list[Any]:
    """Reference images from files, each remembering the file it came from."""
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    return [pb.ReferenceImage(image=read_file(p), metadata={"source": str(p)}) for p in paths]


@contextmanager
def _bad_image_named(paths: Sequence[str]) -> Iterator[None]:
    """Around a call that sends these files as references: the server names a bad image by
    its position ("reference 2: ..."); the user wants its file name."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        found = re.match(r"reference (\d+): (.*)", exc.details() or "", re.DOTALL)
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or found is None:
            raise
        raise CommandError(f"{paths[int(found[1])]}: {found[2]}") from None


@contextmanager
def _within_message_limit(rpc: str, images: Sequence[bytes], how: str = "") -> Iterator[None]:
    """Around a call that sends these images: a request over the server's (or this
    client's) message limit ends with the limit and how to split it (`how`: how, here)."""
    import grpc

    from server.message_limit import advice

    try:
        yield
    except grpc.RpcError as exc:
        said = None
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            said = advice(exc.details(), rpc, [len(image) for image in images], how)
        if said is None:
            raise
        raise CommandError(said) from None


def cmd_remove_references(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    request = pb.RemoveReferencesRequest(reference_ids=args.ids)
    removed = connect(args).RemoveReferences(request).removed
    print(f"removed {_reference_images(removed)}")


def cmd_delete_category(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    stub = connect(args)
    category = stub.GetCategory(pb.GetCategoryRequest(name=args.name)).category
    what = f"{' > '.join(category.path)} and its {_reference_images(category.reference_count)}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"deleting {what} cannot be undone; add --yes to confirm")
        if input(f"delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return
    removed = stub.DeleteCategory(pb.DeleteCategoryRequest(name=args.name)).references_removed
    print(f"deleted {args.name} ({_reference_images(removed)} removed)")


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


# -- reindex and rollback ------------------------------------------------------------------

REINDEX_POLL_SECONDS = 0.5


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


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from server.commands.sources import add_csv_arguments

    parser = argparse.ArgumentParser(
        prog="nearcat",
        description="Classify product photos by their nearest reference images. "
        "Add a category by adding example images: no retraining.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Every flag can also be set as NEARCAT_<NAME>.",
    )
    add_settings_flags(serve)
    serve.set_defaults(run=cmd_serve)

    def client_command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=description)
        sub.add_argument(
            "--server",
            default=DEFAULT_SERVER,
            help=f"HOST:PORT of a running nearcat (default: {DEFAULT_SERVER}; env NEARCAT_SERVER)",
        )
        sub.add_argument(
            "--token",
            default=os.environ.get("NEARCAT_TOKEN"),
            help="token for a server with auth on (env NEARCAT_TOKEN, which keeps it out of `ps`)",
        )
        sub.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
        sub.add_argument(
            "--tls-ca",
            default=os.environ.get("NEARCAT_TLS_CA"),
            metavar="PEM",
            help="TLS, trusting this CA certificate (env NEARCAT_TLS_CA)",
        )
        sub.add_argument(
            "--tls-cert",
            default=os.environ.get("NEARCAT_CLIENT_TLS_CERT"),
            metavar="PEM",
            help="client certificate for mutual TLS (env NEARCAT_CLIENT_TLS_CERT; "
            "NEARCAT_TLS_CERT is the server's own certificate)",
        )
        sub.add_argument(
            "--tls-key",
            default=os.environ.get("NEARCAT_CLIENT_TLS_KEY"),
            metavar="PEM",
            help="key of --tls-cert (env NEARCAT_CLIENT_TLS_KEY)",
        )
        return sub

    imp = client_command(
        "import",
        "add reference images from a folder tree or a CSV",
        "Add reference images to a running server. SOURCE is a folder whose image-holding "
        "folders are categories (their ancestor folders become parent categories), or a CSV "
        "with an image-path column and a label column. Categories are created as needed; "
        "images already stored are skipped, so re-running is safe, and resumes an import the "
        "server broke off. Files that are not images nearcat reads (JPEG, PNG, WebP) are "
        "listed with the reason and skipped; one that cannot be read or that the server "
        "refuses is listed too and makes the exit status 1.",
    )
    imp.add_argument("source", type=Path, metavar="SOURCE", help="folder tree or .csv file")
    add_csv_arguments(imp)
    imp.add_argument(
        "--batch-size", type=int, default=IMPORT_BATCH, help="images per AddReferences call"
    )
    imp.add_argument(
        "--group-column",
        help="CSV column grouping images that look alike (e.g. sender_id: one person's photos "
        f"share background and light); stored as the {GROUP_METADATA!r} metadata, so the "
        "calibration never lets a group vote for itself",
    )
    imp.add_argument(
        "--attribute-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="CSV column whose value is an attribute of the image (e.g. kids: true/false), "
        "named as the column; `nearcat classify` then answers it for new photos, from the "
        "nearest references' values (repeatable; a blank cell: the image has none)",
    )
    imp.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip refitting the confidence calibration after importing",
    )
    imp.set_defaults(run=cmd_import)

    classify = client_command(
        "classify",
        "classify image files",
        "Classify image files against the server's categories. Prints the best category with "
        "its score and the runners-up; --json prints one JSON object per file, with the "
        "nearest references as evidence. Exits 1 if any file could not be classified.",
    )
    classify.add_argument("files", nargs="+", metavar="FILE", help="JPEG, PNG or WebP files")
    classify.add_argument("--top-n", type=int, default=3, help="categories to show per image")
    classify.add_argument(
        "--within",
        action="append",
        default=[],
        metavar="CATEGORY",
        help="only answer with this category or those under it (a department the photo is "
        "known to be from); repeat for several",
    )
    classify.add_argument("--json", action="store_true", help="one JSON object per line")
    classify.set_defaults(run=cmd_classify)

    categories = client_command(
        "categories", "list categories", "List categories with their paths and reference counts."
    )
    categories.add_argument("--json", action="store_true", help="one JSON object per line")
    categories.set_defaults(run=cmd_categories)

    show = client_command(
        "show-category",
        "one category: its path, prompts and reference images",
        "Show one category: its path, metadata and text prompts, and each reference image "
        "with its id, when it was added and where it came from. The ids are what "
        "`nearcat remove-references` takes.",
    )
    show.add_argument("name", help="category name")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(run=cmd_show_category)

    add_refs = client_command(
        "add-references",
        "add reference images to an existing category",
        "Add example photos to a category, which classifies by them from the next call. All "
        "or nothing: if one file is not a usable image, nothing is added and the file is "
        "named. A photo already in the category is reported, not stored twice. For whole "
        "folders, use `nearcat import`.",
    )
    add_refs.add_argument("category", help="existing category name")
    add_refs.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG or WebP files")
    add_refs.set_defaults(run=cmd_add_references)

    remove_refs = client_command(
        "remove-references",
        "remove reference images by id",
        "Remove reference images, e.g. a wrong photo seen as evidence in `nearcat classify "
        "--json`; `nearcat show-category` lists the ids. An unknown id removes nothing.",
    )
    remove_refs.add_argument("ids", nargs="+", metavar="ID", help="reference ids")
    remove_refs.set_defaults(run=cmd_remove_references)

    delete = client_command(
        "delete-category",
        "delete a category and its reference images",
        "Delete a category with all its reference images and prompts; it is no longer an "
        "answer from the next call. Asks first (--yes to skip the question, as scripts must). "
        "A category with child categories cannot be deleted: delete the children first.",
    )
    delete.add_argument("name", help="category name")
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    delete.set_defaults(run=cmd_delete_category)

    calibrate_cmd = client_command(
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
    calibrate_cmd.add_argument(
        "--labelled",
        type=Path,
        metavar="SRC",
        help="labelled photos that are not references: a folder tree or a CSV (the CSV flags "
        "below apply); stored durably for the serving model version",
    )
    add_csv_arguments(calibrate_cmd)
    calibrate_cmd.add_argument(
        "--attribute-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="CSV column holding an attribute of each labelled photo (as for `nearcat "
        "import`): from 100 such photos on, the attributes' calibration fits on them "
        "instead of on references (repeatable)",
    )
    calibrate_cmd.add_argument(
        "--group-by",
        metavar="KEY",
        default=GROUP_METADATA,
        help="reference metadata key whose references must not vote for each other, so "
        "one sender's look-alike photos do not make the fit over-confident (default: "
        "%(default)r, where `nearcat import --group-column` stores it; references without "
        "the key are not grouped; '' for no grouping)",
    )
    calibrate_cmd.set_defaults(run=cmd_calibrate)

    add = client_command(
        "add-category",
        "create one category from text prompts and/or images",
        "Create a category. With --prompt (and the default model, or a CLIP model) it is "
        "classifiable at once, before it has a photo; reference images added later take over "
        "from the text. For many categories from folders, use `nearcat import`.",
    )
    add.add_argument("name", help="category name, e.g. 'Straw hats'")
    add.add_argument("images", nargs="*", metavar="IMAGE", help="reference images (optional)")
    add.add_argument("--parent", help="existing parent category")
    add.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="text describing the category, e.g. 'a photo of a straw hat' (repeatable)",
    )
    add.set_defaults(run=cmd_add_category)

    update = client_command(
        "update-category",
        "rename a category, move it, or replace its prompts or metadata",
        "Change a category in one step: a rename keeps its reference images, their vectors "
        "and its children; a move puts it under another parent (--parent '' for the top "
        "level). Answers use the new name and taxonomy from the next call.",
    )
    update.add_argument("name", help="the category's current name")
    update.add_argument("--rename", metavar="NEW_NAME", help="its new name")
    update.add_argument("--parent", help="its new parent ('' for the top level)")
    update.add_argument(
        "--prompt",
        action="append",
        help="replace its prompts with these (repeatable; --prompt '' alone clears them)",
    )
    update.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="replace its metadata with these entries (repeatable)",
    )
    update.set_defaults(run=cmd_update_category)

    zero_shot = client_command(
        "zero-shot",
        "rank free-text labels for an image (no references needed)",
        "Score an image against labels you name, with the model's text tower: no category or "
        "reference is needed. Prints the labels best first.",
    )
    zero_shot.add_argument("image", help="JPEG, PNG or WebP file")
    zero_shot.add_argument(
        "--label", action="append", required=True, help="a candidate label (repeatable)"
    )
    zero_shot.set_defaults(run=cmd_zero_shot)

    search = client_command(
        "search",
        "find categories and reference images from text",
        "Categories whose prompts (or names) best match TEXT, and the reference images "
        "nearest to it.",
    )
    search.add_argument("text", help="e.g. 'red sneakers'")
    search.add_argument("--top-n", type=int, default=5, help="categories to show")
    search.add_argument("--k", type=int, default=5, help="reference images to show")
    search.set_defaults(run=cmd_search)

    status = client_command(
        "status", "show what the server runs", "Model version, index size and counters as JSON."
    )
    status.set_defaults(run=cmd_status)

    reindex = client_command(
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
    reindex.add_argument(
        "--model",
        metavar="NEW",
        help="model artifact directory on the server's machine, registered model name, or "
        "a version in the server's registry",
    )
    reindex.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="F",
        help="refuse when accuracy falls by more than F (0.02: two points; default: the "
        "server's --reindex-max-accuracy-drop)",
    )
    reindex.add_argument(
        "--no-validate", action="store_true", help="switch without measuring accuracy"
    )
    reindex.add_argument(
        "--metrics",
        metavar="JSON",
        help="a JSON file (e.g. from `nearcat eval --json`) kept with the version in the "
        "server's model registry",
    )
    reindex.add_argument(
        "--engine",
        choices=["in-process", "ray"],
        help="what embeds the references: in-process (the default: the server's own model "
        "worker) or ray (model workers on a Ray cluster; the server needs "
        "`pip install 'nearcat[ray]'`; docs/ray.md)",
    )
    reindex.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: the cluster, HOST:PORT or ray://HOST:PORT, 'auto' (one "
        "running on the server's machine) or 'local' (start one there); default: "
        "RAY_ADDRESS on the server, else one running there, else a new one there",
    )
    reindex.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="with --engine ray: model workers, each loading the model once (default 2)",
    )
    reindex.add_argument(
        "--ray-cpus-per-worker",
        type=float,
        metavar="C",
        help="with --engine ray: CPUs each worker reserves and runs the model on (default 1)",
    )
    reindex.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        metavar="G",
        help="with --engine ray: GPUs each worker reserves, fractions share one; above 0 the "
        "model runs on the GPU (default: 1 when the server runs with --device cuda, else 0)",
    )
    reindex.add_argument("--no-wait", dest="wait", action="store_false", help="start it and return")
    reindex.add_argument(
        "--status", action="store_true", help="show the running or last reindex and exit"
    )
    reindex.set_defaults(run=cmd_reindex)

    rollback = client_command(
        "rollback",
        "switch back to the previous model version",
        "Switch the server back to the model version served before the last reindex. Its "
        "vectors are still stored, so only references added since are embedded; no "
        "validation. Exits 1 unless it switched.",
    )
    rollback.add_argument(
        "--no-wait", dest="wait", action="store_false", help="start it and return"
    )
    rollback.set_defaults(run=cmd_rollback)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import grpc

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it picked
    try:
        args.run(args)
    except CommandError as exc:
        print(f"nearcat: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except grpc.RpcError as exc:
        from server.message_limit import advice

        said = advice(exc.details()) if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
        if said is not None:
            print(f"nearcat: {said}", file=sys.stderr)
        else:
            answer = f"{exc.code().name}: {exc.details()}"
            print(f"nearcat: the server answered {answer}", file=sys.stderr)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, ImportError) as exc:
        # A stop signal while a compiled module initialises (onnxruntime, loading the model)
        # surfaces as that module's "initialization failed", caused by the interrupt.
        if not _caused_by_interrupt(exc):
            raise
        print("nearcat: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader went away (`nearcat show-category X | head`): not an error to report.
        # Point stdout at /dev/null so flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports it


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `exc`."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


if __name__ == "__main__":
    main()
