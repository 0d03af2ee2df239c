"""Category names as the catalogue stores and compares them; light, for clients too."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable


def normalise_name(name: str) -> str:
    """A category name in Unicode NFC, the form names are stored and looked up in: "é" sent
    as one code point or as "e" and a combining accent (as macOS spells file names) is one
    name."""
    return unicodedata.normalize("NFC", name)


def name_key(name: str) -> str:
    """What two names that differ only in case (or Unicode form) have in common."""
    return normalise_name(normalise_name(name).casefold())


def case_twins(name: str, names: Iterable[str]) -> list[str]:
    """The other names among `names` that differ from `name` only in case (or Unicode form):
    allowed, but mostly a typo that splits one category in two."""
    key = name_key(name)
    return sorted(n for n in names if n != name and name_key(n) == key)


def case_twin_warning(name: str, twins: Iterable[str]) -> str:
    twins = list(twins)
    shown = ", ".join(repr(t) for t in twins)
    return (
        f"category {name!r} differs only in case from {shown}: these are separate "
        f"categories; if they are one, delete {name!r} and use {twins[0]!r}"
    )
