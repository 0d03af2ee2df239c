"""One contract for every blob store: a directory, and S3 (boto3 against an S3-compatible
endpoint: moto's server here, as MinIO or AWS in production)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.blobs import Blobs, DirBlobs, S3Blobs, open_blobs
from tests.helpers import free_port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["dir", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Blobs:
    if request.param == "dir":
        return open_blobs(str(tmp_path / "blobs"))
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    bucket = f"nearcat-{tmp_path.name.lower().replace('_', '-')}"[:63]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return open_blobs(f"s3://{bucket}/images")


def test_put_get_delete(blobs: Blobs) -> None:
    blobs.put("Shoes:abc.1", b"jpeg bytes")
    blobs.put("Shoes:def.2", b"more")
    assert blobs.get("Shoes:abc.1") == b"jpeg bytes"
    assert blobs.get("Shoes:missing.3") is None
    blobs.delete(["Shoes:abc.1", "Shoes:never-there.4"])
    assert blobs.get("Shoes:abc.1") is None
    assert blobs.get("Shoes:def.2") == b"more"


def test_urls_name_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_blobs(str(tmp_path)), DirBlobs)
    assert open_blobs((tmp_path / "x").as_uri()).url == (tmp_path / "x").as_uri()
    with pytest.raises(ValueError, match="names no bucket"):
        open_blobs("s3:///prefix")


def test_s3_url_keeps_bucket_and_prefix(blobs: Blobs) -> None:
    if isinstance(blobs, S3Blobs):
        assert blobs.url.startswith("s3://nearcat-") and blobs.url.endswith("/images")
        assert open_blobs(blobs.url).url == blobs.url
