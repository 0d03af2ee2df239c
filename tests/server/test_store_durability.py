"""The durability check on an external store, when the store refuses CONFIG (managed
services and restricted ACL users do)."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis

from server.app import warn_if_not_durable


def test_a_store_that_refuses_config_still_serves_with_a_warning(
    valkey: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = f"no-config-{uuid.uuid4().hex[:6]}", "secret"
    valkey.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all", "-config"]
    )
    kwargs = valkey.connection_pool.connection_kwargs
    if "path" in kwargs:
        limited = redis.Redis(unix_socket_path=kwargs["path"], username=user, password=password)
    else:
        limited = redis.Redis(kwargs["host"], kwargs["port"], username=user, password=password)
    try:
        with caplog.at_level(logging.WARNING):
            warn_if_not_durable(limited)
    finally:
        limited.close()
        valkey.acl_deluser(user)
    assert "cannot check the external store's durability" in caplog.text
