"""What `nearcat classify` prints for answers a person could misread or that could crash it."""

from __future__ import annotations

import pytest

from server.cli import print_result
from server.proto.nearcat.v1 import nearcat_pb2 as pb


def test_an_answer_without_categories_is_printed_not_a_crash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    item = pb.ClassifyBatchItem(classification=pb.Classification(decision=pb.UNKNOWN))
    print_result("photo.jpg", item, "v1", as_json=False)
    assert capsys.readouterr().out == "photo.jpg: no category (unknown)\n"
