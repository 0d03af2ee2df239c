"""Where reference images live: a directory, or S3-compatible object storage.

Redis keeps what every call needs in memory (categories, reference metadata, vectors); the
image bytes are needed only to re-embed (a reindex) and to show a reference, and at a
million references of 200 KB they would be 200 GB of RAM. So they go here, one object per
stored reference, under a key the store records in the reference's hash.

A key is written once and never overwritten (a fresh key per write), so two servers adding
or removing the same image can never delete each other's bytes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

MARKER = "nearcat-blobs-id"  # names a blob store, so that a store can tell it is the right one


class Blobs(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None:
        """Store `data` durably under `key` (on disk / acknowledged when this returns)."""

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, None when there are none."""

    def delete(self, keys: Iterable[str]) -> None:
        """Remove these keys; absent ones are no error."""


def new_key(reference_id: str) -> str:
    """A key never used before for this reference's image."""
    return f"{reference_id}.{uuid.uuid4().hex[:12]}"


def reference_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def open_blobs(url: str) -> Blobs:
    """`s3://bucket/prefix` (credentials and endpoint from the usual AWS_* environment), or
    a directory (`file:///path` or a plain path)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"blob URL {url!r} names no bucket; give s3://bucket/prefix")
        return S3Blobs(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme in ("", "file"):
        return DirBlobs(Path(parsed.path if parsed.scheme else url))
    raise ValueError(f"blob URL {url!r}: give a directory, file:///path or s3://bucket/prefix")


class DirBlobs:
    """One file per key, fanned out over 256 subdirectories; written to a temporary name,
    fsync'ed and renamed, so a crash leaves either the whole file or none."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f".{key}.partial")
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def stored_keys(self) -> list[str]:
        """Every key stored (for checks; a store of millions is walked, not listed)."""
        return sorted(p.name for p in self.root.glob("??/*") if not p.name.startswith("."))


class S3Blobs:
    """Objects under `prefix/` of a bucket; boto3 reads credentials, region and endpoint
    (AWS_ENDPOINT_URL for MinIO and the like) from the environment as usual."""

    def __init__(self, bucket: str, prefix: str) -> None:
        try:
            import boto3
        except ImportError:
            raise ValueError("an s3:// blob URL needs boto3: pip install 'nearcat[s3]'") from None
        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._s3: Any = boto3.client("s3")

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    def get(self, key: str) -> bytes | None:
        try:
            reply = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))
        except self._s3.exceptions.NoSuchKey:
            return None
        return bytes(reply["Body"].read())

    def delete(self, keys: Iterable[str]) -> None:
        names = [{"Key": self._name(k)} for k in keys]
        for start in range(0, len(names), 1000):  # the most one request may name
            self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": names[start : start + 1000], "Quiet": True}
            )
