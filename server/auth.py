"""Optional token auth with three roles: `classify` (read-only calls), `reviewer` (those and
the review queue) and `admin` (everything).

Clients send ``authorization: Bearer <token>`` metadata. A missing or unknown token is
UNAUTHENTICATED, a known token without the role the RPC needs is PERMISSION_DENIED. Health
checking and reflection stay open, so load balancers and grpcurl work without a token.

Tokens come from a file (one ``ROLE TOKEN [NAME]`` a line, ``#`` comments) or from a
comma-separated list of the same entries (NEARCAT_AUTH_TOKENS). The server keeps only their
SHA-256, and logs and rate-limits a client by its NAME, never by its token.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.call_context import CLIENT_NAME, CLIENT_ROLE
from server.interceptors import refusal, unary, wrap_unary

MIN_TOKEN_LENGTH = 16
SERVICE = "nearcat.v1.Nearcat"
# RPCs of the Nearcat service that read only. Every other RPC of it needs `admin`, so an RPC
# added later is closed until it is listed here on purpose.
READ_ONLY_METHODS = frozenset(
    {
        "Classify",
        "ClassifyBatch",
        "ListCategories",
        "GetCategory",
        "GetStatus",
        "ZeroShot",
        "SearchByText",
        "GetReindexStatus",
        "GetReferenceImage",
        "WhoAmI",
    }
)
# RPCs a reviewer may call beyond the read-only ones: the review queue. (A verdict may add a
# reference or a category: the server does that on the reviewer's word, the reviewer cannot
# otherwise write to the catalogue.)
REVIEW_METHODS = frozenset({"ClaimReviews", "SubmitVerdict", "GetReviewStats"})
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class Role(enum.Enum):
    CLASSIFY = "classify"
    REVIEWER = "reviewer"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        rank = [Role.CLASSIFY, Role.REVIEWER, Role.ADMIN]
        return rank.index(self) >= rank.index(needed)


@dataclass(frozen=True)
class Client:
    name: str
    role: Role


class TokenError(ValueError):
    """A tokens file or list that cannot be used; the message says where and why."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """Known tokens (by SHA-256) and the client each one identifies."""

    def __init__(self, clients: dict[str, Client]) -> None:
        self._clients = clients

    def __len__(self) -> int:
        return len(self._clients)

    @classmethod
    def parse(cls, entries: Sequence[str], source: str) -> TokenTable:
        """Entries of the form ``ROLE TOKEN [NAME]``; blank ones and ``#`` comments skipped."""
        clients: dict[str, Client] = {}
        for number, entry in enumerate(entries, start=1):
            fields = entry.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{source}, entry {number}"
            if len(fields) not in (2, 3):
                raise TokenError(f"{where}: expected 'ROLE TOKEN [NAME]', got {len(fields)} fields")
            role_name, token = fields[0], fields[1]
            try:
                role = Role(role_name)
            except ValueError:
                raise TokenError(
                    f"{where}: unknown role {role_name!r}; use "
                    + " or ".join(r.value for r in Role)
                ) from None
            if len(token) < MIN_TOKEN_LENGTH:
                raise TokenError(
                    f"{where}: token is {len(token)} characters; use at least "
                    f"{MIN_TOKEN_LENGTH} random ones (e.g. `openssl rand -hex 24`)"
                )
            digest = _digest(token)
            if digest in clients:
                raise TokenError(f"{where}: the same token is listed twice")
            name = fields[2] if len(fields) == 3 else f"{role.value}-{digest[:8]}"
            clients[digest] = Client(name, role)
        return cls(clients)

    def identify(self, token: str | None) -> Client | None:
        return self._clients.get(_digest(token)) if token else None


def load_tokens(path: Path | None, inline: str | None) -> TokenTable | None:
    """The tokens of a file and/or an inline comma-separated list; None when auth is off."""
    entries: list[str] = []
    sources: list[str] = []
    if path is not None:
        try:
            entries += path.read_text().splitlines()
        except OSError as exc:
            raise TokenError(f"cannot read the tokens file {path}: {exc.strerror}") from exc
        sources.append(str(path))
    if inline:
        entries += inline.split(",")
        sources.append("NEARCAT_AUTH_TOKENS")
    if not sources:
        return None
    table = TokenTable.parse(entries, " + ".join(sources))
    if not len(table):
        raise TokenError(f"{' + '.join(sources)} lists no tokens: every call would be refused")
    return table


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def required_role(method: str) -> Role | None:
    """The role a full method name ('/package.Service/Method') needs; None when open."""
    service, _, name = method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    if service == SERVICE and name in READ_ONLY_METHODS:
        return Role.CLASSIFY
    if service == SERVICE and name in REVIEW_METHODS:
        return Role.REVIEWER
    return Role.ADMIN


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls whose token is missing, unknown, or lacks the RPC's role."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    def client(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Client | None:
        return self.tokens.identify(bearer_token(metadata))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        needed = required_role(details.method)
        if handler is None or needed is None:
            return handler
        client = self.client(details.invocation_metadata)
        if client is None:
            return refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown token: send 'authorization: Bearer <token>' metadata "
                "(nearcat CLI: --token or NEARCAT_TOKEN)",
            )
        if not client.role.allows(needed):
            method = details.method.rsplit("/", 1)[-1]
            return refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"client {client.name!r} has role {client.role.value!r}; {method} needs "
                f"{needed.value!r}",
            )
        if not unary(handler):
            return handler
        inner = handler.unary_unary

        def identified(request: Any, context: grpc.ServicerContext) -> Any:
            CLIENT_NAME.set(client.name)
            CLIENT_ROLE.set(client.role.value)
            return inner(request, context)

        return wrap_unary(handler, identified)
