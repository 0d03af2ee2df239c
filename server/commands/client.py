"""What every client command of `nearcat` shares: reaching the server and talking to it.

The connection (TLS, bearer token, waiting out rate limits), the flags that choose the server,
message limits and batching, reading files, and what to say when the server stops answering.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from server.commands import CommandError
from server.message_limit import CLIENT_MAX_MESSAGE_BYTES

Item = TypeVar("Item")

DEFAULT_SERVER = os.environ.get("NEARCAT_SERVER", "127.0.0.1:50051")
# What one message to or from the server may hold at most, here; the server has its own
# limit on what it receives (--max-message-bytes, 64 MiB by default), and a request over it
# gets advice on splitting it (server.message_limit).
MAX_MESSAGE_BYTES = CLIENT_MAX_MESSAGE_BYTES
IMPORT_BATCH = 16
# Bytes of images per AddReferences call: well under the message limit, whatever the photos.
IMPORT_BATCH_BYTES = MAX_MESSAGE_BYTES // 4
RATE_LIMIT_RETRIES = 20
GROUP_METADATA = "group"  # reference metadata key that `import` stores a CSV's group in


def client_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand that talks to a server: its parser, with the flags that say which and how."""
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
                wait_ms = retry_after_ms(outcome)
                if wait_ms is None:  # exhausted otherwise, e.g. a message too large
                    return outcome
                time.sleep(wait_ms / 1000)
            return continuation(details, request)  # the last try, whatever it answers

    return grpc.intercept_channel(channel, WaitOutRateLimit())


def retry_after_ms(call: Any) -> int | None:
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


@contextmanager
def within_message_limit(rpc: str, images: Sequence[bytes], how: str = "") -> Iterator[None]:
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
