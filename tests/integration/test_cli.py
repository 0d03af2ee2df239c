"""The `nearcat` command against a real server: import, classify, categories, help."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli import main
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import CLOTHING, KINDS, ROOT, ServerProcess, make_image

pytestmark = pytest.mark.integration


def nearcat(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        stdin=subprocess.DEVNULL,  # never a terminal, whoever runs the tests
    )
    if check and result.returncode != 0:
        raise AssertionError(f"nearcat {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("cli") / "data", model_artifact).start()
    yield process
    process.stop()


@pytest.mark.parametrize(
    "command",
    [
        "",
        "serve",
        "import",
        "classify",
        "categories",
        "status",
        "calibrate",
        "add-category",
        "add-references",
        "show-category",
        "remove-references",
        "delete-category",
        "zero-shot",
        "search",
    ],
)
def test_help_teaches(command: str) -> None:
    result = nearcat(*filter(None, [command]), "--help")
    assert "usage: nearcat" in result.stdout
    if command == "serve":
        assert "--redis-url" in result.stdout and "NEARCAT_REDIS_URL" in result.stdout
    if command == "import":
        assert "--path-template" in result.stdout


def test_unreachable_server_says_what_to_do() -> None:
    result = nearcat("categories", "--server", "127.0.0.1:9", check=False)
    assert result.returncode == 2
    assert "nearcat serve" in result.stderr
    portless = nearcat("categories", "--server", "127.0.0.1", check=False)
    assert portless.returncode == 2 and "give HOST:PORT" in portless.stderr


def test_import_a_folder_tree_then_classify(server: ServerProcess, tmp_path: Path) -> None:
    tree = tmp_path / "photos"
    for kind in KINDS:
        folder = tree / "Patterns" / kind
        folder.mkdir(parents=True)
        for seed in range(5):
            (folder / f"{seed}.jpg").write_bytes(make_image(kind, seed))
    broken = tree / "Patterns" / "dots" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    # Files that are not images nearcat reads are skipped, each named with the reason.
    (tree / "Patterns" / "dots" / "anim.gif").write_bytes(b"GIF89a...")
    (tree / "Patterns" / "dots" / "photo.avif").write_bytes(b"\0\0\0\x1cftypavif")
    (tree / "Patterns" / "notes.txt").write_text("where these came from")
    (tree / "Patterns" / "stripes" / ".DS_Store").write_bytes(b"\0")

    args = ("--server", server.address)
    first = nearcat("import", str(tree), *args, "--batch-size", "4", check=False)
    assert "imported 15 new references" in first.stdout
    assert "4 skipped (listed above), 1 failed" in first.stdout
    for name, reason in [
        ("anim.gif", "GIF image: nearcat reads JPEG, PNG and WebP only"),
        ("photo.avif", "AVIF image: nearcat reads JPEG, PNG and WebP only"),
        ("notes.txt", "not an image nearcat reads"),
        (".DS_Store", "a hidden file"),
    ]:
        assert f"{name}: {reason}" in first.stderr
    assert f"failed {broken}: " in first.stderr and "not an image" in first.stderr
    # A failure is an error: exit status 1 and what to do, after the import finished.
    assert first.returncode == 1
    assert "1 file could not be added" in first.stderr
    assert "run the same command again" in first.stderr
    # 15 references are too few to calibrate on; import says so and carries on
    assert "not calibrated: " in first.stderr and "too few to calibrate on" in first.stderr
    broken.unlink()
    again = nearcat("import", str(tree), *args)
    assert "imported 0 new references" in again.stdout and "15 already there" in again.stdout
    assert again.returncode == 0

    listed = [
        json.loads(line)
        for line in nearcat("categories", "--json", "--server", server.address).stdout.splitlines()
    ]
    counts = {c["name"]: c["reference_count"] for c in listed}
    assert counts == {"Patterns": 0, "stripes": 5, "checkers": 5, "dots": 5}
    assert {tuple(c["path"]) for c in listed} >= {("Patterns", "dots")}

    queries = []
    for kind, fmt in zip(KINDS, ["JPEG", "JPEG", "PNG"], strict=True):
        path = tmp_path / f"query-{kind}.{fmt.lower()}"
        path.write_bytes(make_image(kind, 321, fmt=fmt))
        queries.append(path)
    out = nearcat("classify", *map(str, queries), "--json", "--server", server.address).stdout
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["categories"][0]["category"] for a in answers] == list(KINDS)
    assert answers[0]["categories"][0]["path"] == ["Patterns", "stripes"]
    assert answers[0]["neighbors"][0]["category"] == "stripes"
    for answer in answers:
        # not calibrated: its scores are raw vote shares, so nothing is auto-accepted
        assert answer["decision"] in {"flag", "review", "unknown"}
        # not calibrated (too few references), so no confidence head: the top probability
        assert answer["confidence"] == answer["categories"][0]["score"]
        assert answer["levels"][0]["category"] == "Patterns"
        assert answer["levels"][0]["score"] == pytest.approx(1.0, abs=1e-3)

    text = nearcat("classify", str(queries[0]), "--server", server.address).stdout
    assert "Patterns > stripes" in text


def test_a_category_whose_name_differs_only_in_case_gets_a_note(server: ServerProcess) -> None:
    first = nearcat("add-category", "Straw hats", "--server", server.address)
    assert "note:" not in first.stderr
    twin = nearcat("add-category", "straw Hats", "--server", server.address)
    assert "added straw Hats" in twin.stdout
    assert "note: category 'straw Hats' differs only in case from 'Straw hats'" in twin.stderr
    for name in ("Straw hats", "straw Hats"):
        nearcat("delete-category", name, "--yes", "--server", server.address)


def test_an_import_cut_short_by_the_server_says_rerunning_resumes(
    tmp_path: Path, model_artifact: Path
) -> None:
    tree = tmp_path / "photos"
    (tree / "dots").mkdir(parents=True)
    for seed in range(60):
        (tree / "dots" / f"{seed}.jpg").write_bytes(make_image("dots", seed))
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, model_artifact).start()
    importer = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "import", str(tree), "--batch-size", "1"]
        + ["--no-calibrate", "--server", server.address],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stub = server.stub()
        stored = 0
        while stored < 3 and importer.poll() is None:
            stored = stub.GetStatus(pb.GetStatusRequest()).index_size
            time.sleep(0.01)
        server.kill()
        out, err = importer.communicate(timeout=120)
    finally:
        if importer.poll() is None:
            importer.kill()
    assert 0 < stored < 60, "the import was not caught in the middle"
    assert importer.returncode == 2, out + err
    assert f"the server at {server.address} went away or lost its store (UNAVAILABLE" in err
    assert "of 60 images" in err
    assert "run the same command again: images already stored are skipped" in err

    server = ServerProcess(data_dir, model_artifact).start()
    try:
        rerun = nearcat("import", str(tree), "--no-calibrate", "--server", server.address)
        assert server.stub().GetStatus(pb.GetStatusRequest()).index_size == 60
    finally:
        server.stop()
    counts = re.search(r"imported (\d+) new references .*; (\d+) already there", rerun.stdout)
    assert counts is not None, rerun.stdout
    added, already = int(counts[1]), int(counts[2])
    assert added + already == 60 and already >= stored  # what was stored is not sent again
    assert "0 failed" in rerun.stdout


def test_classify_reports_a_bad_file_and_exits_1(server: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    result = nearcat("classify", str(bad), "--server", server.address, check=False)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stdout


def test_a_reader_that_goes_away_is_not_an_error(server: ServerProcess) -> None:
    """`nearcat categories | head -1`: the reader may close the pipe before nearcat writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "categories", "--server", server.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # long before it has connected and printed
    code = process.wait(timeout=120)
    assert code == 141 and process.stderr.read() == b""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_category_kept_by_hand(
    server: ServerProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A merchandiser's round: create, add examples (one already there, one not a photo),
    look, take a wrong one out, delete; each step's outcome shows in the next."""
    at = ("--server", server.address)
    photos = [tmp_path / f"scarf-{seed}.jpg" for seed in range(3)]
    for seed, path in enumerate(photos):
        path.write_bytes(make_image("dots", 500 + seed))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    nearcat("add-category", "Scarves", str(photos[0]), *at)
    as_path = nearcat("add-category", "Wraps", "--parent", "Clothing > Scarves", *at, check=False)
    assert as_path.returncode == 2 and "e.g. 'Scarves'" in as_path.stderr
    again = nearcat("add-category", "Scarves", str(photos[1]), *at, check=False)
    assert again.returncode == 2 and "nearcat add-references" in again.stderr

    refused = nearcat("add-references", "Scarves", str(photos[1]), str(notes), *at, check=False)
    assert refused.returncode == 2 and f"nearcat: {notes}: " in refused.stderr
    added = nearcat("add-references", "Scarves", *map(str, photos), *at).stdout
    assert f"{photos[0]}: already a reference of Scarves" in added
    assert "added 2 reference images to Scarves, which now has 3" in added

    shown = json.loads(nearcat("show-category", "Scarves", "--json", *at).stdout)
    assert shown["reference_count"] == 3
    sources = {r["metadata"]["source"]: r["id"] for r in shown["references"]}
    assert set(sources) == set(map(str, photos))
    wrong = sources[str(photos[2])]
    assert wrong in nearcat("show-category", "Scarves", *at).stdout
    assert "removed 1 reference image" in nearcat("remove-references", wrong, *at).stdout
    again = nearcat("remove-references", wrong, *at, check=False)
    assert again.returncode == 2 and "NOT_FOUND" in again.stderr

    renamed = nearcat(
        "update-category", "Scarves", "--rename", "Shawls", "--prompt", "a shawl", *at
    )
    assert "updated Shawls (2 reference images, prompts: a shawl)" in renamed.stdout
    clash = nearcat("update-category", "Shawls", "--metadata", "no-equals", *at, check=False)
    assert clash.returncode == 2 and "KEY=VALUE" in clash.stderr
    nearcat("update-category", "Shawls", "--rename", "Scarves", "--prompt", "", *at)

    unconfirmed = nearcat("delete-category", "Scarves", *at, check=False)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    main(["delete-category", "Scarves", *at])  # asked at a terminal, answered no
    assert "nothing deleted" in capsys.readouterr().out
    kept = json.loads(nearcat("show-category", "Scarves", "--json", *at).stdout)
    assert kept["reference_count"] == 2
    deleted = nearcat("delete-category", "Scarves", "--yes", *at).stdout
    assert "deleted Scarves (2 reference images removed)" in deleted
    gone = nearcat("show-category", "Scarves", *at, check=False)
    assert gone.returncode == 2 and "NOT_FOUND" in gone.stderr


def test_import_a_csv_with_groups_calibrates_without_letting_a_group_vote_for_itself(
    server: ServerProcess, tmp_path: Path
) -> None:
    rows = ["image,label,sender"]
    for kind in ("stripes", "dots"):
        for seed in range(24):
            (tmp_path / f"{kind}-{seed}.jpg").write_bytes(make_image(kind, 600 + seed))
            rows.append(f"{kind}-{seed},{kind.title()} (csv),sender-{seed % 4}")
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n")
    args = ["--path-template", "{}.jpg", "--group-column", "sender", "--server", server.address]
    out = nearcat("import", str(tmp_path / "images.csv"), *args).stdout
    assert "imported 48 new references into 2 categories" in out
    assert "calibrated on leave-one-shoot-out over" in out and "and its 'group'" in out

    stub = server.stub()
    refs = stub.GetCategory(pb.GetCategoryRequest(name="Dots (csv)", include_references=True))
    assert {r.metadata["group"] for r in refs.references} == {f"sender-{i}" for i in range(4)}
    assert stub.GetStatus(pb.GetStatusRequest()).calibration.examples > 0
    # A later plain `nearcat calibrate` keeps the grouping the import stored; '' drops it.
    at = ["--server", server.address]
    assert "and its 'group'" in nearcat("calibrate", *at).stdout
    assert "and its" not in nearcat("calibrate", "--group-by", "", *at).stdout


@pytest.mark.dataset
@pytest.mark.skipif(not CLOTHING.exists(), reason="../shared/datasets/clothing is absent")
def test_clothing_accuracy_is_clearly_above_chance(tmp_path: Path, model_artifact: Path) -> None:
    """A few references for a handful of real categories; queries from other contributors."""
    from embedder.datasets import load_csv

    categories = ["T-Shirt", "Pants", "Shoes", "Dress", "Hat", "Shorts"]
    refs_per_category, queries_per_category = 8, 10
    dataset = load_csv(
        CLOTHING / "images.csv", path_template="images/{}.jpg", group_column="sender_id"
    )
    by_category = dataset.by_category()
    tree = tmp_path / "refs"
    queries: list[tuple[Path, str]] = []
    for category in categories:
        images = sorted(by_category[category], key=lambda i: i.path.name)
        refs = images[:refs_per_category]
        ref_senders = {i.group for i in refs}
        (tree / category).mkdir(parents=True)
        for image in refs:
            os.symlink(image.path, tree / category / image.path.name)
        others = [i for i in images[refs_per_category:] if i.group not in ref_senders]
        queries += [(i.path, category) for i in others[:queries_per_category]]

    process = ServerProcess(tmp_path / "data", model_artifact).start()
    try:
        nearcat("import", str(tree), "--server", process.address)
        out = nearcat(
            "classify", *(str(p) for p, _ in queries), "--json", "--server", process.address
        ).stdout
    finally:
        process.stop()
    predicted = [json.loads(line)["categories"][0]["category"] for line in out.splitlines()]
    accuracy = sum(p == truth for p, (_, truth) in zip(predicted, queries, strict=True)) / len(
        queries
    )
    chance = 1 / len(categories)
    print(
        f"\nclothing: {len(categories)} categories, {refs_per_category} references each, "
        f"{len(queries)} queries from other contributors: "
        f"top-1 {accuracy:.1%} (chance {chance:.1%})"
    )
    assert accuracy >= 2.5 * chance


def test_a_second_server_on_a_busy_port_is_refused(
    server: ServerProcess, tmp_path: Path, model_artifact: Path
) -> None:
    # gRPC would otherwise share the port (SO_REUSEPORT) and take half the first one's calls.
    port = server.address.rsplit(":", 1)[1]
    result = nearcat(
        "serve",
        "--port",
        port,
        "--data-dir",
        str(tmp_path / "data"),
        "--model",
        str(model_artifact),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_external_store_that_does_not_answer_is_named(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    result = nearcat("serve", "--port", "0", "--redis-url", url, check=False)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the store at {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stop_signal_during_start_up_abandons_it_cleanly(
    tmp_path: Path, model_artifact: Path
) -> None:
    """SIGTERM while the server is still starting (store up, model loading) stops it there:
    no half-started server, the embedded store closed, no traceback."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", "0"]
            + ["--data-dir", str(tmp_path / "data"), "--model", str(model_artifact)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 120
        while b"embedded Valkey started" not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # apart, or Python runs the handler once for both
        process.send_signal(signal.SIGINT)  # a second one must not cut the clean-up short
        code = process.wait(timeout=120)
    finally:
        process.kill()
    text = log_path.read_text()
    # 130 from nearcat; or killed by the second signal once the interpreter had already
    # restored default handlers on its way out, after the clean-up below.
    assert code in (130, -signal.SIGINT), text
    assert "nearcat: interrupted" in text and "Traceback" not in text
    assert "listening" not in text
    assert "embedded Valkey stopped" in text  # the store was closed, not left running


def test_a_server_without_a_terminal_logs_json_lines_only(
    tmp_path: Path, model_artifact: Path
) -> None:
    """What a log collector reads from stderr: one JSON object per line, no progress bars
    (the text model's "Loading weights", the index's "embedding")."""
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.jsonl"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", "0"]
            + ["--data-dir", str(tmp_path / "data"), "--model", str(model_artifact)],
            stdout=out,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 120
        while b"listening" not in out_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    lines = err_path.read_text().splitlines()
    assert any("index ready" in line for line in lines)
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_import_waits_out_the_servers_rate_limit(tmp_path: Path, model_artifact: Path) -> None:
    """A rate-limited server answers RESOURCE_EXHAUSTED with the wait; import waits and goes
    on instead of failing half-way."""
    tree = tmp_path / "photos"
    (tree / "dots").mkdir(parents=True)
    for seed in range(6):
        (tree / "dots" / f"{seed}.jpg").write_bytes(make_image("dots", seed))
    limited = ServerProcess(
        tmp_path / "data", model_artifact, ["--rate-limit", "2", "--rate-burst", "2"]
    ).start()
    try:
        result = nearcat(
            "import", str(tree), "--server", limited.address, "--batch-size", "1", "--no-calibrate"
        )
    finally:
        limited.stop()
    assert "imported 6 new references" in result.stdout and "0 failed" in result.stdout


def test_a_repeated_stop_signal_still_stops_gracefully(
    tmp_path: Path, model_artifact: Path
) -> None:
    """Ctrl-C under `make run` reaches nearcat and make forwards a SIGTERM too: the second
    signal must not cut the graceful stop (in-flight calls finishing) short."""
    process = ServerProcess(tmp_path / "data", model_artifact).start()
    assert process.process is not None
    try:
        process.process.send_signal(signal.SIGINT)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=60) == 0, process.log()
    finally:
        process.kill()  # a server that did not stop must not outlive the test
    assert "stopping: letting in-flight calls finish" in process.log()
    assert "interrupted" not in process.log()


def test_calibrate_on_labelled_photos_stores_them_and_says_what_was_earned(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Photos a person labelled, not references: stored durably, then the calibration's
    source once there are enough; `status` shows the source and the auto-accept verdict."""
    at = ["--server", server.address]
    refs = tmp_path / "refs"
    for kind in KINDS:
        (refs / f"L-{kind}").mkdir(parents=True)
        for seed in range(10):
            (refs / f"L-{kind}" / f"{seed}.jpg").write_bytes(make_image(kind, 700 + seed))
    nearcat("import", str(refs), "--no-calibrate", *at)
    labelled = tmp_path / "labelled"
    for kind in KINDS:
        (labelled / f"L-{kind}").mkdir(parents=True)
        for seed in range(40):
            (labelled / f"L-{kind}" / f"{seed}.jpg").write_bytes(make_image(kind, 800 + seed))
    (labelled / "L-dots" / "broken.jpg").write_bytes(b"not an image")
    out = nearcat("calibrate", "--labelled", str(labelled), *at)
    assert "stored 120 new labelled photos (1 left out)" in out.stdout
    assert "broken.jpg" in out.stderr
    assert "calibrated on 120 labelled photos" in out.stdout
    assert "auto-accept" in out.stdout  # earned from a confidence, or why nothing is
    again = nearcat("calibrate", "--labelled", str(labelled), *at)
    assert "stored 0 new labelled photos" in again.stdout  # kept once
    status = json.loads(nearcat("status", *at).stdout)["calibration"]
    assert status["source"].startswith("120 labelled photos")
    assert status["has_auto_accept"] or status["no_auto_accept_reason"]
