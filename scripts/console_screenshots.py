"""Screenshots of the web console for the README: docs/img/console-*.png.

Starts a throwaway `nearcat serve --console-port 0` (auth off, so the console opens as admin),
fills a small catalogue from the clothing photos beside the project (CC0; generated pictures
where they are absent), queues a few answers for review, and photographs the pages with
Debian's chromium (`make browser`):

    .venv/bin/python scripts/console_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedder import resolve_model  # noqa: E402
from server.process import ServerProcess  # noqa: E402
from server.proto.nearcat.v1 import nearcat_pb2 as pb  # noqa: E402

CLOTHING = ROOT.parent / "shared" / "datasets" / "clothing"
TAXONOMY = {  # category -> parent ("" for the top level)
    "Tops": "",
    "T-Shirt": "Tops",
    "Longsleeve": "Tops",
    "Shirt": "Tops",
    "Bottoms": "",
    "Pants": "Bottoms",
    "Shorts": "Bottoms",
    "Skirt": "Bottoms",
    "Shoes": "",
    "Hat": "",
}
PER_CATEGORY = 14
MAX_PNG_BYTES = 200_000


def photos() -> dict[str, list[bytes]]:
    """Reference photos per leaf category, and a few left over as queries ("?query")."""
    by_label: dict[str, list[bytes]] = {}
    if (CLOTHING / "images.csv").exists():
        with open(CLOTHING / "images.csv", newline="") as f:
            for row in csv.DictReader(f):
                label = row["label"]
                path = CLOTHING / "images" / f"{row['image']}.jpg"
                kept = by_label.setdefault(label, []) if label in TAXONOMY else None
                if kept is not None and len(kept) < PER_CATEGORY + 2 and path.exists():
                    kept.append(small_jpeg(path.read_bytes()))
        return by_label
    from tests.helpers import make_image

    kinds = {"T-Shirt": "stripes", "Pants": "checkers", "Shoes": "dots"}
    return {
        label: [make_image(kind, seed) for seed in range(PER_CATEGORY + 2)]
        for label, kind in kinds.items()
    }


def small_jpeg(data: bytes, size: int = 320) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()


def fill(stub: Any, images: dict[str, list[bytes]]) -> list[bytes]:
    """The catalogue, parents first; returns the photos kept back as queries."""
    queries: list[bytes] = []
    prompts = {"Hat": ["a photo of a hat"], "Shoes": ["a photo of shoes"]}
    needed = set(images) | {TAXONOMY[name] for name in images if TAXONOMY.get(name)}
    for name, parent in TAXONOMY.items():
        if name not in needed:
            continue
        references = images.get(name, [])
        queries.extend(references[PER_CATEGORY:])
        stub.AddCategory(
            pb.AddCategoryRequest(
                name=name,
                parent=parent,
                prompts=prompts.get(name, []),
                references=[pb.ReferenceImage(image=i) for i in references[:PER_CATEGORY]],
            ),
            timeout=300,
        )
    return queries


def save(page: Any, path: Path) -> None:
    """A PNG under MAX_PNG_BYTES: full colour when small enough, else 256 colours."""
    page.screenshot(path=str(path))
    for dither in (Image.Dither.FLOYDSTEINBERG, Image.Dither.NONE):
        if path.stat().st_size <= MAX_PNG_BYTES:
            break
        page.screenshot(path=str(path))
        with Image.open(path) as image:
            image.convert("RGB").quantize(256, dither=dither).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model("efficientnet_lite0", Path(tmp) / "models")
        server = ServerProcess(
            Path(tmp) / "data", model, ["--console-port", "0", "--recalibrate-after-s", "0"]
        ).start()
        try:
            deadline = time.monotonic() + 60
            while not (match := re.search(r"web console on (http://\S+)/", server.log())):
                if time.monotonic() > deadline:
                    raise SystemExit(server.log())
                time.sleep(0.1)
            url = match.group(1)
            stub = server.stub()
            queries = fill(stub, photos())
            for i, image in enumerate(queries[1:]):  # answers for the review queue
                stub.Classify(pb.ClassifyRequest(image=image, item_id=f"photo-{i}"), timeout=60)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
                )
                page = browser.new_page(viewport={"width": 1280, "height": 800}, base_url=url)
                page.goto("/category?name=Hat")
                page.wait_for_load_state("networkidle")
                save(page, args.out / "console-category.png")

                page.goto("/try")
                query = Path(tmp) / "query.jpg"
                query.write_bytes(queries[0])
                page.set_input_files("#try-form input[type=file]", str(query))
                page.wait_for_selector("#result")
                page.wait_for_load_state("networkidle")
                save(page, args.out / "console-try.png")

                page.goto("/review")
                page.wait_for_load_state("networkidle")
                save(page, args.out / "console-review.png")

                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
