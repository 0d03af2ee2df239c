"""Server interceptors around every call: request ids, the access log, metrics, a default
deadline. Auth (`server.auth`) and rate limits (`server.ratelimit`) are interceptors too.

Order in `server.app`, outermost first: observe (so refusals are logged and counted too),
auth, rate limit, default deadline, then the servicer.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from server.call_context import REQUEST_ID
from server.metrics import Metrics
from server.proto.nearcat.v1 import nearcat_pb2 as pb

access_log = logging.getLogger("nearcat.access")

REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# Health probes and reflection: logged at DEBUG (probes are noisy) and never rate-limited.
QUIET_SERVICES = ("/grpc.health.", "/grpc.reflection.")
MAX_LOGGED_DETAILS = 300
# gRPC Python reports a call without a deadline as about 2**63 ns remaining.
NO_DEADLINE = 1e9

Metadata = Sequence[tuple[str, str | bytes]] | None
Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


def refusal(
    handler: grpc.RpcMethodHandler,
    code: grpc.StatusCode,
    message: str,
    trailing: Sequence[tuple[str, str]] = (),
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses the call without reading it."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        context.abort(code, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse)  # no deserializer: the refused message is never parsed


def unary(handler: grpc.RpcMethodHandler | None) -> bool:
    return handler is not None and handler.unary_unary is not None


def wrap_unary(
    handler: grpc.RpcMethodHandler, behavior: Callable[[Any, grpc.ServicerContext], Any]
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def request_id_of(metadata: Metadata) -> str:
    """The caller's x-request-id when it is a sane token, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and REQUEST_ID_PATTERN.match(value):
            return value
    return uuid.uuid4().hex


def _code_name(code: grpc.StatusCode | None, default: str) -> str:
    return code.name if code is not None else default


class ObserveInterceptor(grpc.ServerInterceptor):
    """Gives each call a request id (sent back as x-request-id initial metadata), logs one
    JSON line per call, and records its latency and status code, the predictions it
    returned, and the drift report into GetStatus answers."""

    def __init__(
        self, metrics: Metrics, client_name: Callable[[Metadata], str | None] | None = None
    ) -> None:
        self.metrics = metrics
        self.client_name = client_name

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or not unary(handler):
            return handler
        inner = handler.unary_unary
        full_method = details.method
        method = full_method.rsplit("/", 1)[-1]
        request_id = request_id_of(details.invocation_metadata)
        client = self.client_name(details.invocation_metadata) if self.client_name else None
        level = logging.DEBUG if full_method.startswith(QUIET_SERVICES) else logging.INFO

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            REQUEST_ID.set(request_id)
            context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            code = "UNKNOWN"
            try:
                response = inner(request, context)
                code = _code_name(context.code(), "OK")
                self.metrics.record_response(response)
                if isinstance(response, pb.GetStatusResponse):
                    self._add_drift(response)
                return response
            except BaseException:
                code = _code_name(context.code(), "UNKNOWN")
                raise
            finally:
                seconds = time.perf_counter() - started
                self.metrics.observe_call(method, code, seconds)
                fields: dict[str, Any] = {
                    "request_id": request_id,
                    "method": method,
                    "code": code,
                    "duration_ms": round(seconds * 1000.0, 2),
                    "peer": context.peer(),
                }
                if client:
                    fields["client"] = client
                if code != "OK":
                    details = context.details() or b""
                    if isinstance(details, bytes):
                        details = details.decode(errors="replace")
                    fields["error"] = details[:MAX_LOGGED_DETAILS]
                access_log.log(level, "rpc %s %s", method, code, extra=fields)

        return wrap_unary(handler, observed)

    def _add_drift(self, response: pb.GetStatusResponse) -> None:
        report = self.metrics.drift.report()
        response.drift.CopyFrom(
            pb.DriftStatus(
                window=report.window,
                baseline_size=report.baseline_size,
                recent_size=report.recent_size,
                ready=report.ready,
                category_psi=report.category_psi,
                confidence_psi=report.confidence_psi,
            )
        )


class _WithDefaultDeadline:
    """A servicer context whose time_remaining() falls back on a server-side deadline when
    the caller set none."""

    def __init__(self, context: grpc.ServicerContext, deadline: float) -> None:
        self._context = context
        self._deadline = deadline

    def time_remaining(self) -> float:
        caller: float | None = self._context.time_remaining()
        if caller is None or caller > NO_DEADLINE:
            return max(0.0, self._deadline - time.monotonic())
        return caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class DefaultDeadlineInterceptor(grpc.ServerInterceptor):
    """Calls that come without a deadline get one; a caller's own deadline is kept as it is.
    Classify checks it before embedding, AddCategory and AddReferences before embedding and
    before writing, so a backlog sheds work nobody waits for; other calls (Calibrate,
    Reindex) run to the end."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or not unary(handler):
            return handler
        inner = handler.unary_unary

        def bounded(request: Any, context: grpc.ServicerContext) -> Any:
            return inner(request, _WithDefaultDeadline(context, time.monotonic() + self.seconds))

        return wrap_unary(handler, bounded)
