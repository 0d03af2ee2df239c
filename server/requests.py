"""What a request may carry: the limits and checks the catalogue applies to names, texts,
metadata, attributes, ids and deadlines before it embeds or writes anything, so that a bad
request is refused with a message a person can act on and nothing is written."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence

from indexer.attributes import MAX_ATTRIBUTES
from indexer.errors import DeadlineExceeded, InvalidArgument
from indexer.ids import REFERENCE_ID_FORM, is_reference_id
from indexer.names import normalise_name

MAX_NAME_LENGTH = 100
MAX_TOP_N = 100
MAX_K = 1000
MAX_WITHIN = 1000  # categories a classification can be restricted to
MAX_ATTRIBUTE_CHARS = 100
MAX_METADATA_BYTES = 16 * 1024
MAX_PROMPTS = 32
MAX_PROMPT_LENGTH = 300
MAX_LABELS = 256


def category_name(name: str, what: str = "category name") -> str:
    """A name from a request, normalised (`normalise_name`) and checked
    (`validate_category_name`)."""
    name = normalise_name(name)
    validate_category_name(name, what)
    return name


def validate_category_name(name: str, what: str = "category name") -> None:
    if not name:
        raise InvalidArgument(f"{what} is empty; give a name such as 'Shoes'")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if name != name.strip():
        raise InvalidArgument(f"{what} {name!r} has leading or trailing spaces; remove them")
    if ">" in name:
        raise InvalidArgument(
            f"{what} {name!r} contains '>', which is reserved for paths; give the category's "
            f"own name, e.g. {name.rsplit('>', 1)[-1].strip()!r}"
        )
    if unprintable(name):
        raise InvalidArgument(f"{what} {name!r} contains control or unprintable characters")


def unprintable(text: str) -> bool:
    """Whether `text` holds a control, format, private-use or unassigned character (Unicode
    category C*): refused in every text a request carries, names, prompts and queries alike."""
    return any(unicodedata.category(ch).startswith("C") for ch in text)


def check_metadata(metadata: dict[str, str], where: str) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{where}: metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}"
        )
    if any(not k for k in metadata):
        raise InvalidArgument(f"{where}: metadata has an empty key")


def check_attributes(attributes: dict[str, str], where: str) -> None:
    """Attributes are answered for images, so each must be a short printable label."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(
            f"{where}: {len(attributes)} attributes; the limit is {MAX_ATTRIBUTES}"
        )
    for name, value in attributes.items():
        for what, text in (("name", name), ("value", value)):
            if not text.strip() or len(text) > MAX_ATTRIBUTE_CHARS or unprintable(text):
                raise InvalidArgument(
                    f"{where}: attribute {what} {text!r} must be 1 to {MAX_ATTRIBUTE_CHARS} "
                    "printable characters (e.g. kids=true, colour=red)"
                )


def check_deadline(deadline: float | None, before: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"deadline passed before {before}")


def listed(names: Sequence[str], shown: int = 5) -> str:
    """Names quoted for a message, the first few of a long list."""
    quoted = ", ".join(repr(n) for n in names[:shown])
    return quoted + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_reference_ids(reference_ids: Sequence[str]) -> None:
    malformed = [i for i in reference_ids if not is_reference_id(i)]
    if malformed:
        shown = ", ".join(repr(i[:40]) for i in malformed[:5]) + (
            " ..." if len(malformed) > 5 else ""
        )
        raise InvalidArgument(
            f"{len(malformed)} malformed reference id(s): {shown}; a reference id is "
            f"{REFERENCE_ID_FORM}, as AddCategory, AddReferences and GetCategory return it "
            "(`nearcat show-category NAME` lists them); nothing was removed"
        )


def check_prompts(prompts: Sequence[str]) -> None:
    if len(prompts) > MAX_PROMPTS:
        raise InvalidArgument(f"{len(prompts)} prompts; the limit is {MAX_PROMPTS}")
    for i, prompt in enumerate(prompts):
        check_text(prompt, f"prompt {i}")


def check_text(text: str, what: str) -> None:
    if not text.strip():
        raise InvalidArgument(f"{what} is empty; give a few words such as 'red sneakers'")
    if len(text) > MAX_PROMPT_LENGTH:
        raise InvalidArgument(f"{what} is {len(text)} characters; the limit is {MAX_PROMPT_LENGTH}")
    if unprintable(text):
        raise InvalidArgument(
            f"{what} {text[:60]!r} contains control or unprintable characters (a tab, a line "
            "break, ...); send plain text"
        )
