"""The console of a TLS server dials it over TLS, trusting the server's certificate; with
auth off there is no login: everyone is admin."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ServerProcess
from tests.integration.test_defence import make_pki

pytestmark = pytest.mark.integration


def test_console_of_a_tls_server(tmp_path: Path, model_artifact: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    pki = make_pki(tmp_path / "pki")
    server = ServerProcess(
        tmp_path / "data",
        model_artifact,
        [
            "--console-port",
            "0",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
        ],
    ).start()
    try:
        deadline = time.monotonic() + 60
        while not (match := re.search(r"web console on (http://\S+/)", server.log())):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        console = match.group(1)
        with urllib.request.urlopen(console + "health", timeout=30) as response:
            page = response.read().decode()
        assert 'id="model-version">efficientnet_lite0' in page, page
        with urllib.request.urlopen(console + "login", timeout=30) as response:
            assert response.url == console  # nothing to log in to
            page = response.read().decode()
        assert re.search(r'id="whoami">\w+ · admin<', page), page
        assert 'id="create-form"' in page and "log out" not in page
    finally:
        assert server.stop() == 0, server.log()
