"""Per-client rate limits: a token bucket per client, refilled at `rate` calls a second up to
`burst`. A client is its token's name when auth is on, else its peer address (IP, no port).
A call over the limit is RESOURCE_EXHAUSTED, with the wait in the message and in the
``retry-after-ms`` trailing metadata. Health checking and reflection are not limited.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import grpc

from server.interceptors import QUIET_SERVICES, Continuation, Metadata, refusal

RETRY_AFTER_KEY = "retry-after-ms"
MAX_CLIENTS = 10_000  # buckets kept; full (idle) ones are dropped past this


class TokenBuckets:
    """One bucket per client key; thread-safe. `clock` is injectable for tests."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token for key: 0.0 when granted, else the seconds until one is there."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                self._forget_idle(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) <= MAX_CLIENTS:
            return
        self._buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate < self.burst
        }


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1'; '[::1]' forms keep their brackets."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in address:
        return f"{kind}:{address.rsplit(':', 1)[0]}"
    return peer


class RateLimitInterceptor(grpc.ServerInterceptor):
    """Refuses calls of a client whose bucket is empty."""

    def __init__(
        self, buckets: TokenBuckets, client_name: Callable[[Metadata], str | None] | None = None
    ) -> None:
        self.buckets = buckets
        self.client_name = client_name

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(QUIET_SERVICES):
            return handler
        name = self.client_name(details.invocation_metadata) if self.client_name else None
        if name is not None:
            return self._check(handler, f"client {name!r}", f"token:{name}")

        # Without a name the peer address is the client; it is known only inside the call.
        def by_peer(request: object, context: grpc.ServicerContext) -> object:
            host = peer_host(context.peer())
            wait = self.buckets.take(f"peer:{host}")
            if wait:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(math.ceil(wait * 1000))),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._message(host, wait))
            assert handler.unary_unary is not None
            return handler.unary_unary(request, context)

        if handler.unary_unary is None:  # streaming RPCs: not limited by peer
            return handler
        return grpc.unary_unary_rpc_method_handler(
            by_peer,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _check(self, handler: grpc.RpcMethodHandler, who: str, key: str) -> grpc.RpcMethodHandler:
        wait = self.buckets.take(key)
        if not wait:
            return handler
        return refusal(
            handler,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            self._message(who, wait),
            trailing=((RETRY_AFTER_KEY, str(math.ceil(wait * 1000))),),
        )

    def _message(self, who: str, wait: float) -> str:
        return (
            f"rate limit for {who} reached ({self.buckets.rate:g} calls/s, bursts of "
            f"{self.buckets.burst:g}); retry in {wait:.2f} s"
        )
