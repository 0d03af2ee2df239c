"""The catalogue's commands: categories and their reference images.

`import` (folders or a CSV, batched and resumable), `add-category`, `update-category`,
`categories`, `show-category`, `add-references`, `remove-references`, `delete-category`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.commands import CommandError
from server.commands.calibrate import calibrate
from server.commands.client import (
    GROUP_METADATA,
    IMPORT_BATCH,
    IMPORT_BATCH_BYTES,
    client_command,
    connect,
    import_batches,
    read_file,
    retry_after_ms,
    stopped_answering,
    within_message_limit,
)
from server.commands.sources import add_csv_arguments

if TYPE_CHECKING:
    from embedder.datasets import LabeledImage


# -- import --------------------------------------------------------------------------------


def register_import(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
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
    parser.add_argument("source", type=Path, metavar="SOURCE", help="folder tree or .csv file")
    add_csv_arguments(parser)
    parser.add_argument(
        "--batch-size", type=int, default=IMPORT_BATCH, help="images per AddReferences call"
    )
    parser.add_argument(
        "--group-column",
        help="CSV column grouping images that look alike (e.g. sender_id: one person's photos "
        f"share background and light); stored as the {GROUP_METADATA!r} metadata, so the "
        "calibration never lets a group vote for itself",
    )
    parser.add_argument(
        "--attribute-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="CSV column whose value is an attribute of the image (e.g. kids: true/false), "
        "named as the column; `nearcat classify` then answers it for new photos, from the "
        "nearest references' values (repeatable; a blank cell: the image has none)",
    )
    parser.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip refitting the confidence calibration after importing",
    )
    parser.set_defaults(run=cmd_import)


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
        limited = retry_after_ms(exc) is not None
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


# -- categories ----------------------------------------------------------------------------


def register_add_category(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "add-category",
        "create one category from text prompts and/or images",
        "Create a category. With --prompt (and the default model, or a CLIP model) it is "
        "classifiable at once, before it has a photo; reference images added later take over "
        "from the text. For many categories from folders, use `nearcat import`.",
    )
    parser.add_argument("name", help="category name, e.g. 'Straw hats'")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="reference images (optional)")
    parser.add_argument("--parent", help="existing parent category")
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="text describing the category, e.g. 'a photo of a straw hat' (repeatable)",
    )
    parser.set_defaults(run=cmd_add_category)


def cmd_add_category(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    references = _file_references(args.images)
    request = pb.AddCategoryRequest(
        name=args.name, parent=args.parent or "", prompts=args.prompt, references=references
    )
    stub = connect(args)
    within = within_message_limit(
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


def register_update_category(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "update-category",
        "rename a category, move it, or replace its prompts or metadata",
        "Change a category in one step: a rename keeps its reference images, their vectors "
        "and its children; a move puts it under another parent (--parent '' for the top "
        "level). Answers use the new name and taxonomy from the next call.",
    )
    parser.add_argument("name", help="the category's current name")
    parser.add_argument("--rename", metavar="NEW_NAME", help="its new name")
    parser.add_argument("--parent", help="its new parent ('' for the top level)")
    parser.add_argument(
        "--prompt",
        action="append",
        help="replace its prompts with these (repeatable; --prompt '' alone clears them)",
    )
    parser.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="replace its metadata with these entries (repeatable)",
    )
    parser.set_defaults(run=cmd_update_category)


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


def register_categories(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "categories",
        "list categories",
        "List categories with their paths and reference counts.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=cmd_categories)


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


def register_show_category(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "show-category",
        "one category: its path, prompts and reference images",
        "Show one category: its path, metadata and text prompts, and each reference image "
        "with its id, when it was added and where it came from. The ids are what "
        "`nearcat remove-references` takes.",
    )
    parser.add_argument("name", help="category name")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(run=cmd_show_category)


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


def register_delete_category(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "delete-category",
        "delete a category and its reference images",
        "Delete a category with all its reference images and prompts; it is no longer an "
        "answer from the next call. Asks first (--yes to skip the question, as scripts must). "
        "A category with child categories cannot be deleted: delete the children first.",
    )
    parser.add_argument("name", help="category name")
    parser.add_argument("--yes", action="store_true", help="delete without asking")
    parser.set_defaults(run=cmd_delete_category)


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


# -- reference images ----------------------------------------------------------------------


def register_add_references(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "add-references",
        "add reference images to an existing category",
        "Add example photos to a category, which classifies by them from the next call. All "
        "or nothing: if one file is not a usable image, nothing is added and the file is "
        "named. A photo already in the category is reported, not stored twice. For whole "
        "folders, use `nearcat import`.",
    )
    parser.add_argument("category", help="existing category name")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG or WebP files")
    parser.set_defaults(run=cmd_add_references)


def cmd_add_references(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    references = _file_references(args.images)
    request = pb.AddReferencesRequest(category=args.category, references=references)
    within = within_message_limit(
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


def register_remove_references(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "remove-references",
        "remove reference images by id",
        "Remove reference images, e.g. a wrong photo seen as evidence in `nearcat classify "
        "--json`; `nearcat show-category` lists the ids. An unknown id removes nothing.",
    )
    parser.add_argument("ids", nargs="+", metavar="ID", help="reference ids")
    parser.set_defaults(run=cmd_remove_references)


def cmd_remove_references(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    request = pb.RemoveReferencesRequest(reference_ids=args.ids)
    removed = connect(args).RemoveReferences(request).removed
    print(f"removed {_reference_images(removed)}")
