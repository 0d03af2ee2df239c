"""Who is calling and which request this is, for the servicer: set by the interceptors for
the length of one call (they run in the call's thread), read where an RPC records a person
(a reviewer's verdict) or a request id (a review item)."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("nearcat_request_id", default="")
# The calling client's name and role as its token says; empty when auth is off.
CLIENT_NAME: ContextVar[str] = ContextVar("nearcat_client_name", default="")
CLIENT_ROLE: ContextVar[str] = ContextVar("nearcat_client_role", default="")
