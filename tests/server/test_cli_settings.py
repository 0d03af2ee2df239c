"""Settings: defaults, NEARCAT_* variables, flags — in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import CommandError, build_parser, load_settings


def settings_for(*argv: str):  # type: ignore[no-untyped-def]
    return load_settings(build_parser().parse_args(["serve", *argv]))


def test_defaults_serve_locally_with_the_packaged_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEARCAT_PORT", "NEARCAT_REDIS_URL", "NEARCAT_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = settings_for()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 50051, Path("var"))
    assert settings.redis_url is None and settings.model == "efficientnet_lite1"


def test_env_vars_override_defaults_and_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARCAT_PORT", "6000")
    monkeypatch.setenv("NEARCAT_REDIS_URL", "redis://db:6379/0")
    assert settings_for().port == 6000
    settings = settings_for("--port", "7000")
    assert settings.port == 7000 and settings.redis_url == "redis://db:6379/0"


def test_invalid_values_name_the_flag() -> None:
    with pytest.raises(CommandError, match=r"--port \(or NEARCAT_PORT\)"):
        settings_for("--port", "not-a-number")
    with pytest.raises(CommandError, match="--k"):
        settings_for("--k", "0")


def test_the_servers_tls_env_vars_do_not_make_client_commands_use_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In the server's container NEARCAT_TLS_CERT/KEY name the server's certificate; `nearcat
    # status` there must not present it as a client certificate.
    monkeypatch.setenv("NEARCAT_TLS_CERT", "/certs/server.pem")
    monkeypatch.setenv("NEARCAT_TLS_KEY", "/certs/server.key")
    args = build_parser().parse_args(["status"])
    assert args.tls_cert is None and args.tls_key is None
    monkeypatch.setenv("NEARCAT_CLIENT_TLS_CERT", "/certs/client.pem")
    monkeypatch.setenv("NEARCAT_CLIENT_TLS_KEY", "/certs/client.key")
    args = build_parser().parse_args(["status"])
    assert (args.tls_cert, args.tls_key) == ("/certs/client.pem", "/certs/client.key")
