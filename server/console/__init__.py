"""The web console: a small web app beside the gRPC server (`nearcat serve --console-port`).

It is a gRPC client of its own server, so what a person may do in the console is exactly
what their token may do over gRPC. Served by uvicorn in a background thread of the server
process; see `server.console.app` for the pages.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from server.settings import Settings


def start_console(settings: Settings, address: str) -> tuple[int, Callable[[], None]]:
    """Serve the console on settings.host:settings.console_port (0: a free port) for the
    gRPC server at `address`; returns the bound port and a function that stops it."""
    import uvicorn

    from server.console.app import build_app
    from server.console.client import Backend, open_channel

    backend = Backend(open_channel(settings, address))
    app = build_app(backend)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.console_port or 0))
    except OSError as error:
        from server.app import PortInUse  # the CLI prints it without a traceback

        sock.close()
        backend.close()
        raise PortInUse(
            f"cannot serve the web console on {settings.host}:{settings.console_port}: "
            f"{error.strerror} (another --console-port, or 0 for a free one)"
        ) from error
    sock.listen(128)
    port = sock.getsockname()[1]
    # log_config=None: leave the server's logging (JSON lines) as it is.
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="nearcat-console", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        sock.close()
        backend.close()
        raise RuntimeError("the web console did not start")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        backend.close()

    return port, stop
