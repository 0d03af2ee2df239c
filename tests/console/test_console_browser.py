"""The web console in a real browser: a real `nearcat serve --console-port 0` process with
auth on, a real Valkey, generated photos, and Debian's chromium driven by Playwright.

Chromium comes from `make browser` (apt's `chromium`, never Playwright's downloads). Where it
is missing the tests skip locally and fail in CI (`CI` set), so CI cannot pass without them.
`NEARCAT_CHROMIUM` names another chromium binary.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ServerProcess, make_image

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("NEARCAT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every image the selector matches has loaded (a thumbnail route that failed shows none).
# (Functions, not bare expressions: the console's CSP forbids eval, which those would need.)
LOADED = "s => [...document.querySelectorAll(s)].every(i => i.complete && i.naturalWidth > 0)"
# The review page shows another item than `id` (or none).
NEXT_ITEM = "id => document.querySelector('#review')?.dataset.review !== id"
TOKENS = {
    "alice": ("admin", "alice-admin-token-0123456789"),
    "rita": ("reviewer", "rita-reviewer-token-0123456789"),
    "carl": ("classify", "carl-classify-token-0123456789"),
}


def _browser_missing(reason: str) -> None:
    message = f"{reason}: run `make browser` (installs Debian's chromium) and `make setup`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _browser_missing("playwright is not installed")
    if not CHROMIUM.exists():
        _browser_missing(f"no browser at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_artifact: Path) -> Iterator[Any]:
    tokens = ",".join(f"{role} {token} {name}" for name, (role, token) in TOKENS.items())
    process = ServerProcess(
        tmp_path_factory.mktemp("console") / "data",
        model_artifact,
        ["--console-port", "0", "--auth-tokens", tokens, "--recalibrate-after-s", "0"],
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def console_url(server: ServerProcess) -> str:
    deadline = time.monotonic() + 60  # start() returns once gRPC listens; the console follows
    while not (match := re.search(r"web console on (http://\S+/)", server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    return match.group(1).rstrip("/")


def metadata(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKENS[name][1]}")]


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Any:
    """The admin's gRPC stub, for what the tests set up or check outside the browser."""
    return server.stub()


@pytest.fixture
def login(browser: Any, console_url: str) -> Iterator[Any]:
    """login(name) -> a logged-in page; every page's console errors fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def open_as(name: str, width: int = 1280, height: int = 800) -> Any:
        context = browser.new_context(
            base_url=console_url, viewport={"width": width, "height": height}
        )
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("/")
        assert page.url.endswith("/login")
        page.fill("input[name=token]", TOKENS[name][1])
        page.click("button[type=submit]")
        page.wait_for_url(f"{console_url}/")
        assert page.locator("#whoami").inner_text() == f"{name} · {TOKENS[name][0]}"
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert not errors, errors


def upload(name: str, data: bytes, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}


def test_a_wrong_token_is_refused_with_the_servers_message(browser: Any, console_url: str) -> None:
    context = browser.new_context(base_url=console_url)
    page = context.new_page()
    response = page.goto("/health")
    assert page.url.endswith("/login")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.fill("input[name=token]", "not-a-token-of-this-server")
    page.click("button[type=submit]")
    assert "missing or unknown token" in page.locator(".flash.error").inner_text()
    context.close()


def test_admin_creates_a_category_by_uploading_photos(login: Any, stub: Any) -> None:
    page = login("alice")
    page.fill("#create-form input[name=name]", "stripes")
    photos = [upload(f"stripes-{seed}.jpg", make_image("stripes", seed)) for seed in range(5)]
    photos.append(upload("broken.jpg", b"this is not an image"))
    photos.append(upload("again.jpg", make_image("stripes", 0)))  # a duplicate
    page.set_input_files("#create-form input[type=file]", photos)
    page.click("#create-form button[type=submit]")
    page.wait_for_url(re.compile(r"/category\?name=stripes"))
    flash = page.locator(".flash").first
    assert "created stripes: 5 added, 1 duplicate, 1 refused" in flash.inner_text()
    assert "broken.jpg:" in flash.locator("li.error").inner_text()  # refused alone, with why
    assert page.locator("#references img").count() == 5
    page.wait_for_function(LOADED, arg="#references img")
    names = {c.name: c.reference_count for c in stub.ListCategories(
        pb.ListCategoriesRequest(), metadata=metadata("alice")).categories}  # fmt: skip
    assert names["stripes"] == 5

    # The other kinds through the category page's upload form; then the catalogue tree.
    for kind in KINDS[1:]:
        page.goto("/")
        page.fill("#create-form input[name=name]", kind)
        page.click("#create-form button[type=submit]")
        page.wait_for_url(re.compile(rf"/category\?name={kind}"))
        page.set_input_files(
            "#upload-form input[type=file]",
            [upload(f"{kind}-{seed}.png", make_image(kind, seed, fmt="PNG"), "image/png")
             for seed in range(5)],
        )  # fmt: skip
        page.click("#upload-form button[type=submit]")
        page.wait_for_load_state()
        assert "5 added" in page.locator(".flash.ok").inner_text()
    page.goto("/")
    tree = page.locator("#tree li")
    assert tree.count() == 3
    page.fill("#filter", "dot")
    assert page.locator("#tree li:visible").all_inner_texts()[0].startswith("dots")


def test_admin_edits_a_category_and_removes_a_reference(login: Any, stub: Any) -> None:
    page = login("alice")
    page.goto("/category?name=dots")
    page.fill("#edit-form input[name=new_name]", "Dots")
    page.select_option("#edit-form select[name=parent]", "checkers")
    page.fill("#edit-form textarea[name=prompts]", "a photo of polka dots")
    page.fill("#edit-form textarea[name=metadata]", "sku=D-1")
    page.click("#edit-form button[type=submit]")
    page.wait_for_url(re.compile(r"/category\?name=Dots"))
    flash = page.locator(".flash.ok").inner_text()
    assert "dots: renamed to Dots, moved under checkers, 1 prompts, metadata" in flash
    assert page.locator(".crumbs").inner_text() == "Catalogue › checkers › Dots"
    assert page.locator(".chip").inner_text() == "a photo of polka dots"
    category = stub.GetCategory(pb.GetCategoryRequest(name="Dots"), metadata=metadata("alice"))
    assert category.category.metadata == {"sku": "D-1"}
    assert category.category.reference_count == 5
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#references form button").first.click()
    page.wait_for_load_state()
    assert "removed 1 reference" in page.locator(".flash.ok").inner_text()
    assert page.locator("#references img").count() == 4


def test_too_many_files_are_refused_with_a_reason(login: Any) -> None:
    page = login("alice")
    page.goto("/category?name=stripes")
    tiny = make_image("dots", 1, size=16)
    page.set_input_files(
        "#upload-form input[type=file]", [upload(f"{i}.jpg", tiny) for i in range(202)]
    )
    page.click("#upload-form button[type=submit]")
    page.wait_for_load_state()
    assert "Too many files" in page.locator(".flash.error").inner_text()
    assert page.url.endswith("/category?name=stripes")


def test_try_it_classifies_a_dropped_photo(login: Any, stub: Any) -> None:
    marked = [
        pb.ReferenceImage(image=make_image("stripes", 300 + i), attributes={"lines": "yes"})
        for i in range(3)
    ]
    stub.AddReferences(
        pb.AddReferencesRequest(category="stripes", references=marked), metadata=metadata("alice")
    )
    page = login("carl")  # classify is enough to try
    page.click("text=Try it")
    page.set_input_files(
        "#try-form input[type=file]", upload("query.jpg", make_image("stripes", 77))
    )
    page.wait_for_selector("#result")  # the form submits itself once a photo is chosen
    assert page.locator("#answer").inner_text() == "stripes"
    assert page.locator("#decision").text_content() in {"auto-accept", "flag", "review", "unknown"}
    assert page.locator("table.bars tr").count() >= 2
    neighbours = page.locator("#result .thumbs img")
    assert neighbours.count() >= 3
    page.wait_for_function(LOADED, arg="#result .thumbs img")
    assert "lines = yes" in page.locator("#attributes").inner_text()


def test_a_photo_dropped_on_try_it_is_classified(login: Any) -> None:
    page = login("carl")
    page.goto("/try")
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
            return transfer;
        }""",
        ["dropped.jpg", base64.b64encode(make_image("dots", 78)).decode()],
    )
    page.dispatch_event("#try-form .drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#result")
    assert page.locator("#result h2").inner_text() == "dropped.jpg"
    assert page.locator("#answer").inner_text() in {"dots", "Dots"}


def test_classify_role_is_not_offered_create_edit_or_review(login: Any) -> None:
    page = login("carl")
    assert page.locator("#create-form").count() == 0
    assert page.locator("nav a", has_text="Review").count() == 0
    page.goto("/category?name=stripes")
    assert page.locator("#upload-form, #edit-form, #references form").count() == 0
    page.goto("/review")
    assert page.url.endswith("/")
    assert "may not open that page" in page.locator(".flash.error").inner_text()


def test_a_big_category_is_paged(login: Any, stub: Any) -> None:
    references = [pb.ReferenceImage(image=make_image("checkers", 1000 + i)) for i in range(50)]
    stub.AddCategory(
        pb.AddCategoryRequest(name="many", references=references),
        metadata=metadata("alice"),
        timeout=120,
    )
    page = login("carl")
    page.goto("/category?name=many")
    assert page.locator("#references img").count() == 48
    assert "1–48 of 50" in page.locator(".pager").inner_text()
    page.click("text=older ›")
    assert page.locator("#references img").count() == 2
    assert "49–50 of 50" in page.locator(".pager").inner_text()
    page.wait_for_function(LOADED, arg="#references img")


def test_odd_names_are_escaped_and_missing_things_explained(login: Any, stub: Any) -> None:
    name = 'Caps & "lids" <b /2?x=1#top'
    stub.AddCategory(
        pb.AddCategoryRequest(name=name, parent="stripes", prompts=["<i>a cap</i>"]),
        metadata=metadata("alice"),
    )
    page = login("carl")
    page.click(f"#tree a:text-is('{name}')")
    assert page.locator("h1").inner_text().startswith(name)
    assert page.locator(".chip").inner_text() == "<i>a cap</i>"
    page.goto("/category?name=no-such-category")
    assert page.url.endswith("/")
    assert "no-such-category" in page.locator(".flash.error").inner_text()
    page.goto("/thumb/0000000000000000")  # an unknown reference: a placeholder, not a 500
    assert "not_found" in page.content()
    # The tab asks for /favicon.ico by itself; a 404 there is a console error (seen in CI).
    assert page.request.get("/favicon.ico").status == 200


def _queue_for_review(stub: Any, count: int = 2) -> int:
    """Classify photos unlike any reference (noise) without skip_review until `count` are
    queued: uncalibrated, a split vote is REVIEW."""
    rng = np.random.default_rng(5)
    queued = 0
    from io import BytesIO

    from PIL import Image

    for seed in range(40):
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG")
        answer = stub.Classify(
            pb.ClassifyRequest(image=buffer.getvalue(), item_id=f"noise-{seed}"),
            metadata=metadata("alice"),
            timeout=60,
        )
        queued += bool(answer.review_id)
        if queued == count:
            return queued
    return queued


def test_reviewer_reviews_with_the_keyboard(login: Any, stub: Any) -> None:
    assert _queue_for_review(stub, 3) == 3
    page = login("rita")
    page.click("nav >> text=Review")
    pending = int(page.locator("#pending").inner_text())
    today = int(page.locator("#reviewed-today").inner_text())
    assert pending >= 2
    assert page.locator("#review").count() == 1
    assert "audit" not in page.locator("main").inner_text().lower()
    page.wait_for_function(LOADED, arg="img.big")
    first = page.locator("#review").get_attribute("data-review")

    page.keyboard.press("1")  # the top candidate
    page.wait_for_function(NEXT_ITEM, arg=first)
    assert page.locator(".flash.ok").count() == 1
    assert int(page.locator("#reviewed-today").inner_text()) == today + 1
    assert int(page.locator("#pending").inner_text()) == pending - 1

    # n, a new category's name, Enter: none of these, and the category is created.
    second = page.locator("#review").get_attribute("data-review")
    page.keyboard.press("n")
    page.keyboard.type("noise")
    page.keyboard.press("Enter")
    page.wait_for_function(NEXT_ITEM, arg=second)
    assert int(page.locator("#reviewed-today").inner_text()) == today + 2
    assert int(page.locator("#pending").inner_text()) == pending - 2
    categories = stub.ListCategories(pb.ListCategoriesRequest(), metadata=metadata("alice"))
    assert "noise" in {c.name for c in categories.categories}

    # s: skip; the item goes back to the queue (for someone else), nothing is reviewed.
    third = page.locator("#review").get_attribute("data-review")
    page.keyboard.press("s")
    page.wait_for_function(NEXT_ITEM, arg=third)
    assert "skipped" in page.locator(".flash.ok").inner_text()
    assert int(page.locator("#reviewed-today").inner_text()) == today + 2
    assert int(page.locator("#pending").inner_text()) == pending - 2


def test_health_page(login: Any) -> None:
    page = login("carl")
    page.click("nav >> text=Health")
    assert page.locator("#model-version").inner_text().startswith("efficientnet_lite0")
    assert re.fullmatch(r"\d+ references", page.locator("#index-size").inner_text())


@pytest.mark.parametrize("path", ["/", "/category?name=stripes", "/try", "/health", "/review"])
def test_phone_width_has_no_horizontal_overflow(login: Any, path: str, tmp_path: Path) -> None:
    page = login("alice", width=375, height=740)
    page.goto(path)
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{path} is {overflow}px wider than a 375px screen"
