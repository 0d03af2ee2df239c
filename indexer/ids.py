"""Reference identity, shared by the server and by clients checking what is stored."""

from __future__ import annotations

import hashlib

# What a reference id looks like, for error messages that have to say it.
REFERENCE_ID_FORM = (
    "16 lowercase hexadecimal digits, the first of them 0-7 (a 63-bit number), "
    "e.g. '5d41402abc4b2a76'"
)


def image_sha256(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def reference_id(category: str, image_sha: str) -> str:
    """The id of an image in a category: the same image in the same category, the same id.

    Deterministic ids make adds idempotent (a retried or re-run import writes nothing twice)
    and let a client check what is stored without sending the image. The id is the hex form of
    a 63-bit integer, which the FAISS index uses directly as its int64 id.
    """
    digest = hashlib.sha256(f"{category}\0{image_sha}".encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') & (2**63 - 1):016x}"


def is_reference_id(value: str) -> bool:
    """Whether `value` has the form of a reference id (a client may send anything)."""
    return (
        len(value) == 16 and all(c in "0123456789abcdef" for c in value) and value[0] < "8"
    )  # 63 bits: FAISS ids are int64


def faiss_id(reference_id: str) -> int:
    return int(reference_id, 16)


def reference_id_of_faiss(faiss_id: int) -> str:
    return f"{faiss_id:016x}"
