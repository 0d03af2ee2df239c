"""TLS for the server and for `nearcat` clients: PEM files in, gRPC credentials out.

Server: a certificate and key turn TLS on; a client CA as well makes it mutual TLS (clients
must present a certificate signed by that CA). Client: a CA file to trust (or the system's
roots) and, for mutual TLS, the client's own certificate and key.
"""

from __future__ import annotations

from pathlib import Path

import grpc


class TlsError(ValueError):
    """A TLS file that cannot be used; the message names it."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if b"-----BEGIN" not in data:
        raise TlsError(f"the {what} {path} is not PEM (no '-----BEGIN' line)")
    return data


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=_read(client_ca, "client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise TlsError("a client certificate needs its key and the key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca else None,
        private_key=_read(key, "client key") if key else None,
        certificate_chain=_read(cert, "client certificate") if cert else None,
    )
