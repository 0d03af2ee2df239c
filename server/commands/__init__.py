"""Subcommands of `nearcat` beyond serving: each module registers its own subparser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CommandError(Exception):
    """A failure the user can act on; `nearcat` prints it without a traceback and exits 2."""


def write_json(result: dict[str, Any], path: Path | None) -> None:
    """`--json FILE`: the command's results, indented, its folder made when missing."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
