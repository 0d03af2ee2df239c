"""Defence end to end: token roles over mutual TLS, rate limits, the default deadline.

Issue 6, must show 5: a classify-only token cannot add or delete; a missing token is
UNAUTHENTICATED when auth is on. The certificates are a throwaway CA made with openssl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from server.tls import channel_credentials
from tests.helpers import ROOT, ServerProcess, make_image

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SHOP_TOKEN = "shop-token-0123456789abcdef"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all EC P-256."""
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=nearcat test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(extensions)
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=nearcat test {name}", cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext", cwd=folder,
        )  # fmt: skip
    return Pki(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    return make_pki(tmp_path_factory.mktemp("tls") / "pki")


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path, pki: Pki
) -> Iterator[ServerProcess]:
    """Auth on (admin and classify-only tokens) over mutual TLS."""
    folder = tmp_path_factory.mktemp("secured")
    tokens = folder / "tokens"
    tokens.write_text(f"admin {ADMIN_TOKEN} ops\nclassify {SHOP_TOKEN} shop\n")
    process = ServerProcess(
        folder / "data",
        model_artifact,
        [
            "--auth-tokens-file", str(tokens),
            "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca),
        ],
    ).start()  # fmt: skip
    yield process
    assert process.stop() == 0, process.log()


def mtls_channel(server: ServerProcess, pki: Pki) -> grpc.Channel:
    credentials = channel_credentials(pki.ca, pki.client_cert, pki.client_key)
    return grpc.secure_channel(server.address, credentials)


@pytest.fixture(scope="module")
def stub(secured: ServerProcess, pki: Pki) -> pb_grpc.NearcatStub:
    stub = pb_grpc.NearcatStub(mtls_channel(secured, pki))
    references = [pb.ReferenceImage(image=make_image("dots", seed)) for seed in range(3)]
    stub.AddCategory(
        pb.AddCategoryRequest(name="dots", references=references),
        metadata=as_client(ADMIN_TOKEN),
        timeout=60,
    )
    return stub


def as_client(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def refused(call: Any, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(metadata)
    return caught.value


READ_CALLS = {
    "Classify": lambda s, m: s.Classify(
        pb.ClassifyRequest(image=make_image("dots", 50)), metadata=m, timeout=30
    ),
    "ListCategories": lambda s, m: s.ListCategories(pb.ListCategoriesRequest(), metadata=m),
    "GetCategory": lambda s, m: s.GetCategory(pb.GetCategoryRequest(name="dots"), metadata=m),
    "GetStatus": lambda s, m: s.GetStatus(pb.GetStatusRequest(), metadata=m),
}
ADMIN_CALLS = {
    "AddCategory": lambda s, m: s.AddCategory(pb.AddCategoryRequest(name="Hats"), metadata=m),
    "AddReferences": lambda s, m: s.AddReferences(
        pb.AddReferencesRequest(
            category="dots", references=[pb.ReferenceImage(image=make_image("dots", 60))]
        ),
        metadata=m,
        timeout=30,
    ),
    "RemoveReferences": lambda s, m: s.RemoveReferences(
        pb.RemoveReferencesRequest(reference_ids=["00000000deadbeef"]), metadata=m
    ),
    "DeleteCategory": lambda s, m: s.DeleteCategory(
        pb.DeleteCategoryRequest(name="dots"), metadata=m
    ),
}


def catalogue(stub: pb_grpc.NearcatStub) -> dict[str, int]:
    listed = stub.ListCategories(pb.ListCategoriesRequest(), metadata=as_client(ADMIN_TOKEN))
    return {c.name: c.reference_count for c in listed.categories}


@pytest.mark.parametrize("method", [*READ_CALLS, *ADMIN_CALLS])
@pytest.mark.parametrize("token", [None, "not-a-known-token-at-all"], ids=["missing", "unknown"])
def test_without_a_known_token_every_call_is_unauthenticated(
    stub: pb_grpc.NearcatStub, method: str, token: str | None
) -> None:
    before = catalogue(stub)
    call = {**READ_CALLS, **ADMIN_CALLS}[method]
    error = refused(lambda m: call(stub, m), as_client(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in error.details()
    assert catalogue(stub) == before


@pytest.mark.parametrize("method", list(ADMIN_CALLS))
def test_a_classify_token_cannot_add_or_delete(stub: pb_grpc.NearcatStub, method: str) -> None:
    before = catalogue(stub)
    error = refused(lambda m: ADMIN_CALLS[method](stub, m), as_client(SHOP_TOKEN))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"client 'shop' has role 'classify'; {method} needs 'admin'"
    assert catalogue(stub) == before


@pytest.mark.parametrize("method", list(READ_CALLS))
def test_a_classify_token_reads_and_classifies(stub: pb_grpc.NearcatStub, method: str) -> None:
    READ_CALLS[method](stub, as_client(SHOP_TOKEN))


def test_an_admin_token_adds_and_deletes(stub: pb_grpc.NearcatStub) -> None:
    admin = as_client(ADMIN_TOKEN)
    stub.AddCategory(pb.AddCategoryRequest(name="Hats"), metadata=admin)
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Hats"), metadata=admin)
    assert "Hats" not in catalogue(stub)


def test_health_and_reflection_need_no_token(secured: ServerProcess, pki: Pki) -> None:
    channel = mtls_channel(secured, pki)
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [listed] = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    assert "nearcat.v1.Nearcat" in {s.name for s in listed.list_services_response.service}


@pytest.mark.parametrize("how", ["plaintext", "TLS without a client certificate"])
def test_mutual_tls_refuses_clients_without_a_certificate(
    secured: ServerProcess, pki: Pki, how: str
) -> None:
    if how == "plaintext":
        channel = grpc.insecure_channel(secured.address)
    else:
        channel = grpc.secure_channel(secured.address, channel_credentials(pki.ca))
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.NearcatStub(channel).GetStatus(
            pb.GetStatusRequest(), metadata=as_client(ADMIN_TOKEN), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def nearcat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_cli_speaks_tls_and_sends_its_token(
    secured: ServerProcess, pki: Pki, stub: pb_grpc.NearcatStub, tmp_path: Path
) -> None:
    tls = [
        "--server", secured.address,
        "--tls-ca", str(pki.ca),
        "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key),
    ]  # fmt: skip
    status = nearcat("status", *tls, "--token", SHOP_TOKEN)
    assert status.returncode == 0, status.stderr
    assert '"drift"' in status.stdout
    assert isinstance(json.loads(status.stdout)["index_size"], int)  # not protobuf's "15"
    photo = tmp_path / "dots.jpg"
    photo.write_bytes(make_image("dots", 70))
    classified = nearcat("classify", str(photo), *tls, "--token", SHOP_TOKEN)
    assert classified.returncode == 0, classified.stderr
    assert classified.stdout.startswith(f"{photo}: dots")
    missing = nearcat("categories", *tls)
    assert missing.returncode == 2 and "UNAUTHENTICATED" in missing.stderr
    folder = tmp_path / "photos" / "Hats"
    folder.mkdir(parents=True)
    (folder / "h.jpg").write_bytes(make_image("stripes", 71))
    denied = nearcat("import", str(tmp_path / "photos"), *tls, "--token", SHOP_TOKEN)
    assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
    no_tls = nearcat("status", "--server", secured.address, "--token", SHOP_TOKEN)
    assert no_tls.returncode == 2 and "--tls" in no_tls.stderr


def test_tokens_never_reach_the_log(secured: ServerProcess, stub: pb_grpc.NearcatStub) -> None:
    stub.GetStatus(pb.GetStatusRequest(), metadata=as_client(SHOP_TOKEN))
    log = secured.log()
    assert '"client": "shop"' in log
    assert SHOP_TOKEN not in log and ADMIN_TOKEN not in log


# -- rate limits and the default deadline --------------------------------------------------


def test_a_client_over_its_rate_limit_is_told_when_to_retry(
    tmp_path: Path, model_artifact: Path
) -> None:
    process = ServerProcess(
        tmp_path / "data", model_artifact, ["--rate-limit", "0.01", "--rate-burst", "3"]
    ).start()
    try:
        stub = process.stub()
        for _ in range(3):
            stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListCategories(pb.ListCategoriesRequest(), timeout=10)
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in error.details() and "retry in" in error.details()
        retry_after = dict(error.trailing_metadata())["retry-after-ms"]
        assert 0 < int(retry_after) <= 100_000
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(process.address))
        for _ in range(5):  # probes are never limited
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    finally:
        assert process.stop() == 0, process.log()


def test_calls_without_a_deadline_get_the_default_one(tmp_path: Path, model_artifact: Path) -> None:
    process = ServerProcess(
        tmp_path / "data", model_artifact, ["--default-deadline-s", "0.001"]
    ).start()
    try:
        stub = process.stub()
        stub.AddCategory(pb.AddCategoryRequest(name="dots"))  # nothing to embed: no check
        adding = pb.AddReferencesRequest(
            category="dots", references=[pb.ReferenceImage(image=make_image("dots", 1))]
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.AddReferences(adding)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "nothing was written" in caught.value.details()
        assert stub.AddReferences(adding, timeout=60).added == 1  # the caller's own deadline
    finally:
        assert process.stop() == 0, process.log()
