"""The console's gRPC client: every console action is an RPC of the server it sits beside.

So auth, roles, validation and metrics stay the server's; the console only forwards the
person's token as ``authorization: Bearer`` metadata and shows the server's answer, or its
refusal message, never a stack trace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from server.message_limit import CLIENT_MAX_MESSAGE_BYTES, advice
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from server.settings import Settings

# What each role is offered; the server enforces the same on every RPC.
ROLE_RANK = {"classify": 0, "reviewer": 1, "admin": 2}
TIMEOUT_S = 30.0
CLASSIFY_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = CLIENT_MAX_MESSAGE_BYTES  # the server has its own: --max-message-bytes


@dataclass(frozen=True)
class Who:
    """The person behind a token, as the server's WhoAmI says."""

    name: str
    role: str
    auth_enabled: bool

    def can(self, role: str) -> bool:
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]


class Refused(Exception):
    """An RPC the server refused: its status code name and its message, for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, error: grpc.RpcError) -> Refused:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        name = code.name if code is not None else "UNKNOWN"
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return cls(name, "this server does not offer that yet (UNIMPLEMENTED)")
        if code is grpc.StatusCode.UNAVAILABLE:
            return cls(name, f"the nearcat server is unreachable: {details or 'no answer'}")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and (said := advice(details)):
            return cls(name, said)  # a message over the size limit, which gRPC words badly
        return cls(name, details or name)


def connect_address(address: str, tls: bool) -> str:
    """Where to dial the server listening on `address`: a wildcard host is dialled on the
    loopback (by name with TLS, where certificates usually say localhost)."""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "::", "[::]"):
        host = "localhost" if tls else "127.0.0.1"
    return f"{host}:{port}"


def open_channel(settings: Settings, address: str) -> grpc.Channel:
    """A channel to the server; TLS with its own certificate as the root to trust."""
    from server.tls import channel_credentials

    # Settings refuse --console-port with mutual TLS: the console has no client certificate.
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if settings.tls_cert is not None:
        credentials = channel_credentials(ca=settings.tls_cert)
        return grpc.secure_channel(connect_address(address, True), credentials, options)
    return grpc.insecure_channel(connect_address(address, False), options)


class Backend:
    """The server's RPCs with a person's token; `call` turns refusals into `Refused`."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.stub = pb_grpc.NearcatStub(channel)
        self._who: dict[str, tuple[float, Who]] = {}
        self._lock = threading.Lock()

    def call(self, method: str, request: Any, token: str | None, timeout: float = TIMEOUT_S) -> Any:
        rpc: Callable[..., Any] = getattr(self.stub, method)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            return rpc(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise Refused.of(error) from None

    def whoami(self, token: str | None, fresh: bool = False) -> Who:
        """The token's name and role, cached for a minute (a page load asks every time)."""
        key = token or ""
        now = time.monotonic()
        with self._lock:
            cached = self._who.get(key)
        if cached and not fresh and cached[0] > now:
            return cached[1]
        try:
            answer = self.call("WhoAmI", pb.WhoAmIRequest(), token)
            who = Who(answer.name or "anonymous", answer.role or "admin", answer.auth_enabled)
        except Refused as refused:
            if refused.code != "UNIMPLEMENTED":
                raise
            who = self._guess(token)
        with self._lock:
            if len(self._who) > 1000:
                self._who.clear()
            self._who[key] = (now + 60.0, who)
        return who

    def _guess(self, token: str | None) -> Who:
        """A server without WhoAmI: a read tells whether the token is known; the role
        cannot be told, so everything is offered and the server refuses what it must."""
        self.call("ListCategories", pb.ListCategoriesRequest(), token)
        return Who("you" if token else "anonymous", "admin", bool(token))

    def forget(self, token: str | None) -> None:
        with self._lock:
            self._who.pop(token or "", None)

    def close(self) -> None:
        self.channel.close()
