"""Resumable training state, written atomically at the end of every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from embedder.atomic import replace_file

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(work_dir: Path, state: dict[str, Any]) -> None:
    """Write beside the old checkpoint, then rename: a kill mid-write keeps the previous one."""
    replace_file(Path(work_dir) / CHECKPOINT_FILE, lambda f: torch.save(state, f))


def load_checkpoint(work_dir: Path) -> dict[str, Any] | None:
    path = Path(work_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def remove_checkpoint(work_dir: Path) -> None:
    """After a finished run: a later run in the same work dir starts afresh (reusing the
    feature cache) instead of being taken for an interrupted one."""
    (Path(work_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)
