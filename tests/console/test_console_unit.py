"""The console's pure parts: the taxonomy tree, form parsing, review helpers, thumbnails,
and where (and whether) it can dial its server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from server.console.app import (
    candidates,
    category_tree,
    parse_lines,
    parse_metadata,
    reviewed_today,
)
from server.console.client import Who, connect_address
from server.console.images import ThumbnailCache, shrink
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.settings import Settings
from tests.helpers import make_image


def category(name: str, parent: str = "", count: int = 0) -> pb.Category:
    return pb.Category(name=name, parent=parent, reference_count=count)


def test_tree_puts_children_under_parents_and_sums_their_references() -> None:
    rows = category_tree(
        [
            category("Shoes", "", 2),
            category("Boots", "Shoes", 3),
            category("Apparel", "", 0),
            category("Sneakers", "Shoes", 4),
            category("Orphan", "Gone", 1),  # a parent the list lacks: shown at the top
        ]
    )
    assert [(depth, c.name, total) for depth, c, total in rows] == [
        (0, "Apparel", 0),
        (0, "Orphan", 1),
        (0, "Shoes", 9),
        (1, "Boots", 3),
        (1, "Sneakers", 4),
    ]


def test_metadata_lines() -> None:
    assert parse_metadata("sku=A-1\n\n colour: red \nurl=http://x/?a=b") == {
        "sku": "A-1",
        "colour": "red",
        "url": "http://x/?a=b",
    }
    with pytest.raises(ValueError, match="line 2"):
        parse_metadata("a=1\nno separator")
    assert parse_lines(" one \n\n two") == ["one", "two"]


def test_review_helpers() -> None:
    stats = pb.ReviewStats(
        reviewed_per_day=[
            pb.DayCount(day="2026-12-01", count=4),
            pb.DayCount(day="2026-12-02", count=7),
        ]
    )
    assert reviewed_today(stats, "2026-12-02") == 7
    assert reviewed_today(stats, "2026-12-03") == 0
    answer = pb.Classification(
        categories=[
            pb.CategoryScore(category=c, score=s)
            for c, s in [("A", 0.5), ("B", 0.3), ("C", 0.1), ("D", 0.1)]
        ],
        neighbors=[pb.Neighbor(reference_id=f"r{i}", category=c) for i, c in enumerate("ABAAAAAC")],
    )
    picked = candidates(answer)
    assert [score.category for score, _ in picked] == ["A", "B", "C"]
    assert [[n.reference_id for n in near] for _, near in picked] == [
        ["r0", "r2", "r3", "r4"],  # at most four each
        ["r1"],
        ["r7"],
    ]


def test_roles() -> None:
    assert Who("r", "reviewer", True).can("classify")
    assert Who("r", "reviewer", True).can("reviewer")
    assert not Who("r", "reviewer", True).can("admin")
    assert not Who("x", "nonsense", True).can("classify")


def test_dial_address() -> None:
    assert connect_address("0.0.0.0:50051", tls=False) == "127.0.0.1:50051"
    assert connect_address("0.0.0.0:50051", tls=True) == "localhost:50051"
    assert connect_address("10.0.0.5:7", tls=False) == "10.0.0.5:7"


def test_mutual_tls_is_refused_before_anything_starts(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="cannot run with mutual TLS"):
        Settings(tls_cert=pem, tls_key=pem, tls_client_ca=pem, console_port=0)
    Settings(tls_cert=pem, tls_key=pem, tls_client_ca=pem)  # without the console: fine


def test_thumbnails_are_small_jpegs_kept_least_recently_used() -> None:
    data = shrink(make_image("dots", 1, size=600, fmt="PNG"))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert max(image.size) == 160
    cache = ThumbnailCache(capacity=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert cache.get("b") is None
    assert cache.get("a") == b"1" and cache.get("c") == b"3"
