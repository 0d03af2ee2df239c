"""A request over gRPC's message limit gets advice a person can act on."""

from __future__ import annotations

import grpc
import pytest

from server.console.client import Refused
from server.message_limit import (
    PER_IMAGE_OVERHEAD_BYTES,
    PER_REQUEST_OVERHEAD_BYTES,
    TooLarge,
    advice,
    images_per_call,
    too_large,
)

MB = 1024 * 1024
SERVER_SAID = "SERVER: Received message larger than max (9437200 vs. 8388608)"


def test_grpc_s_words_are_read() -> None:
    assert too_large(SERVER_SAID) == TooLarge(9437200, 8388608, by_server=True)
    sent = too_large("CLIENT: Sent message larger than max (70000000 vs. 67108864)")
    assert sent == TooLarge(70000000, 67108864, by_server=False)
    assert too_large("rate limit: retry after 500 ms") is None
    assert too_large(None) is None


def test_images_per_call_by_hand() -> None:
    limit = PER_REQUEST_OVERHEAD_BYTES + 3 * (2 * MB + PER_IMAGE_OVERHEAD_BYTES)
    assert images_per_call(limit, [2 * MB] * 10) == 3
    assert images_per_call(limit - 1, [2 * MB] * 10) == 2
    # any 3 must fit: counted on the largest
    assert images_per_call(limit, [1 * MB, 2 * MB, 2 * MB, 2 * MB, 1 * MB]) == 3
    assert images_per_call(limit, [7 * MB]) == 0
    assert images_per_call(limit, []) == 0


def test_advice_names_the_limit_and_how_many_images_a_call() -> None:
    said = advice(SERVER_SAID, "AddReferences", [3 * MB] * 3, "one command per group")
    assert said == (
        "the request is 9.0 MB, more than the 8.0 MB the server accepts in one message "
        "(nearcat serve --max-message-bytes): split it into several AddReferences calls of "
        "at most 2 of these images each (one command per group)"
    )
    unknown = advice(SERVER_SAID)
    assert unknown is not None and unknown.endswith(
        "split it into several calls (AddReferences, ClassifyBatch, ...) of fewer images each"
    )
    alone = advice(SERVER_SAID, "AddReferences", [9 * MB])
    assert alone is not None and "its largest image alone is 9.0 MB: downscale" in alone
    assert advice("too many requests", "AddReferences", [MB]) is None


class _Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("details", "shown"),
    [
        (SERVER_SAID, "more than the 8.0 MB the server accepts in one message"),
        ("rate limited: retry in 1 s", "rate limited: retry in 1 s"),
    ],
)
def test_the_console_shows_the_advice_too(details: str, shown: str) -> None:
    refused = Refused.of(_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert refused.code == "RESOURCE_EXHAUSTED" and shown in refused.message
