"""`nearcat export`: add an ONNX model to an artifact, checked against PyTorch.

A thin layer over `embedder.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from server.commands import CommandError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_CHECK_IMAGES = 32

DESCRIPTION = """\
Export a model artifact's network (backbone, projection head and L2 norm) to ONNX and add it
to the artifact as model.onnx, with its sha256 in config.json. The server then serves the
artifact with ONNX Runtime (its --runtime auto), which is several times faster on a CPU than
PyTorch, and refuses to start if model.onnx no longer matches its checksum.

Before anything is written the export must pass onnx.checker, and ONNX Runtime must agree
with PyTorch on real images (cosine similarity >= 0.999 for every image), decoded and
preprocessed exactly as the server does. Give your own photos with --check-images; without
them a few generated pictures are used. An interrupted export leaves the artifact as it was."""

EPILOG = """\
examples:
  nearcat export var/models/my-finetuned
  nearcat export var/models/my-finetuned --check-images photos/shoes photos/shirt.jpg
  nearcat export var/models/my-finetuned --force     # replace an existing model.onnx
"""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "export",
        help="add an ONNX model to a model artifact (checked against PyTorch)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model artifact folder")
    parser.add_argument(
        "--check-images",
        type=Path,
        nargs="+",
        default=[],
        metavar="PATH",
        help=f"image files or folders of images (JPEG, PNG, WebP) to compare ONNX Runtime "
        f"with PyTorch on; the first {MAX_CHECK_IMAGES} are used (default: generated images)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the artifact's existing model.onnx"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from embedder import ArtifactError, ImageDecodeError
    from embedder.export import ExportError, export_artifact

    files = check_image_files(args.check_images)
    images = [path.read_bytes() for path in files]
    print(f"exporting {args.model_dir} to ONNX ...", flush=True)
    try:
        report = export_artifact(args.model_dir, images or None, force=args.force)
    except ImageDecodeError as exc:
        bad = files[exc.index] if exc.index is not None else "a check image"
        raise CommandError(f"cannot use {bad} as a check image: {exc.reason}") from exc
    except (FileExistsError, FileNotFoundError, ArtifactError, ExportError) as exc:
        raise CommandError(str(exc)) from exc
    whose = "of your" if files else "generated"
    print(
        f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, sha256 {report.sha256[:12]}...) "
        f"in {report.seconds:.1f} s\n"
        f"  ONNX Runtime vs PyTorch on {report.images_checked} {whose} images: "
        f"min cosine {report.min_cosine:.6f}"
    )


def check_image_files(paths: list[Path]) -> list[Path]:
    """The image files named, folders expanded (sorted), at most MAX_CHECK_IMAGES."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"--check-images: {path} does not exist")
    if paths and not files:
        raise CommandError(f"--check-images: no {'/'.join(IMAGE_SUFFIXES)} files found")
    return files[:MAX_CHECK_IMAGES]
