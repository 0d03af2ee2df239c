"""gRPC's limit on the size of one message, and what to tell a person who runs into it.

Both ends of a channel enforce a limit. The server's is `nearcat serve --max-message-bytes`
(NEARCAT_MAX_MESSAGE_BYTES, 64 MiB by default): gRPC itself refuses a larger request with
RESOURCE_EXHAUSTED ("Received message larger than max (N vs. LIMIT)") before nearcat sees
it, so the server cannot word that error; its clients (the CLI, the console) do, here. A
client's own limit on what it sends is `CLIENT_MAX_MESSAGE_BYTES`. Images are what makes a
request large: a call with many (AddReferences, AddCategory, ClassifyBatch, AddLabelled)
must be split into calls of fewer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# What the CLI and the console send and accept in one message: the server's default limit.
CLIENT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Room in a message for what is not image bytes: per image (its field, its metadata, e.g.
# the source path) and per request (names, options).
PER_IMAGE_OVERHEAD_BYTES = 4 * 1024
PER_REQUEST_OVERHEAD_BYTES = 64 * 1024

_MB = 1024 * 1024
_TOO_LARGE = re.compile(r"(Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")


@dataclass(frozen=True)
class TooLarge:
    """A message gRPC refused for its size."""

    size: int  # bytes of the refused message
    limit: int  # bytes the refusing end accepts
    by_server: bool  # the server's limit (else the client's own)


def too_large(details: str | None) -> TooLarge | None:
    """The sizes in gRPC's RESOURCE_EXHAUSTED message for an over-size message; None for
    any other RESOURCE_EXHAUSTED (a rate limit)."""
    found = _TOO_LARGE.search(details or "")
    if found is None:
        return None
    return TooLarge(int(found[2]), int(found[3]), found[1] == "Received")


def images_per_call(limit: int, sizes: Sequence[int]) -> int:
    """How many of these images any one call can carry within `limit` bytes: the most n for
    which the n largest fit (0: the largest alone does not)."""
    room = limit - PER_REQUEST_OVERHEAD_BYTES
    count = 0
    for size in sorted(sizes, reverse=True):
        room -= size + PER_IMAGE_OVERHEAD_BYTES
        if room < 0:
            break
        count += 1
    return count


def advice(
    details: str | None, rpc: str = "", sizes: Sequence[int] = (), how: str = ""
) -> str | None:
    """What to do about a request gRPC refused for its size, for a person: the limit in MB
    and, given the sizes of the request's images, how many to send per `rpc` call (`how`:
    how to split it where the person is, e.g. a command to run per group). None when
    `details` is not about a message's size."""
    refused = too_large(details)
    if refused is None:
        return None
    whose = (
        "the server accepts in one message (nearcat serve --max-message-bytes)"
        if refused.by_server
        else "this client sends in one message"
    )
    said = (
        f"the request is {refused.size / _MB:.1f} MB, more than the "
        f"{refused.limit / _MB:.1f} MB {whose}"
    )
    calls = f"several {rpc} calls" if rpc else "several calls (AddReferences, ClassifyBatch, ...)"
    if not sizes:
        return f"{said}: split it into {calls} of fewer images each"
    per_call = images_per_call(refused.limit, sizes)
    if per_call == 0:
        return (
            f"{said}, and its largest image alone is {max(sizes) / _MB:.1f} MB: downscale or "
            "recompress it"
        )
    split = f"{said}: split it into {calls} of at most {per_call} of these images each"
    return f"{split} ({how})" if how else split
