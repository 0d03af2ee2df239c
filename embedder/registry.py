"""The model registry: every model version a server has served or reindexed to, on disk.

`<data dir>/models/registry/<version>/` holds the artifact's files (the big ones hard links
to the source where the file system allows, else copies; config.json records each file's sha256,
checked on every load) and `registry.json`: where it came from, when, and its metrics (an
evaluation given by the operator, and the holdout validation of the reindex that
introduced it). Keeping the files here means a rollback still works after the directory
a model was trained into is gone. Which version is *active* is not recorded here but in
the store, so every server of one store agrees on it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.artifact import CONFIG_FILE, verify_artifact
from embedder.atomic import exclusive, replace_text
from embedder.errors import ArtifactError

ENTRY_FILE = "registry.json"


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    path: Path
    source: str
    registered_at_ms: int
    metrics: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    """Model versions under one directory, each an artifact plus its registry entry."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def register(self, artifact: Path, metrics: dict[str, Any] | None = None) -> RegisteredModel:
        """Add the artifact at `artifact` under its version (kept as it is when already
        there), merging `metrics` into its entry. Its files must match their checksums."""
        artifact = Path(artifact)
        version = verify_artifact(artifact)
        target = self.root / version
        if not target.exists():
            self._copy_in(artifact, target)
        entry = self.get(version)
        if metrics:
            entry = self.record_metrics(version, metrics)
        return entry

    def has(self, version: str) -> bool:
        return (self.root / version / ENTRY_FILE).is_file()

    def get(self, version: str) -> RegisteredModel:
        path = self.root / version
        if not (path / ENTRY_FILE).is_file():
            raise ArtifactError(
                f"model version {version} is not in the registry {self.root}: start the "
                "server once with --model pointing at its artifact, or reindex to it"
            )
        data = json.loads((path / ENTRY_FILE).read_text())
        return RegisteredModel(
            version=version,
            path=path,
            source=data.get("source", ""),
            registered_at_ms=int(data.get("registered_at_ms", 0)),
            metrics=data.get("metrics", {}),
        )

    def record_metrics(self, version: str, metrics: dict[str, Any]) -> RegisteredModel:
        """Merge `metrics` (e.g. {"validation": {...}}) into the version's entry; two
        processes recording at once both keep theirs."""
        with exclusive(self.get(version).path):
            entry = self.get(version)
            merged = {**entry.metrics, **metrics}
            _write_json(
                entry.path / ENTRY_FILE, _entry_json(entry.source, entry.registered_at_ms, merged)
            )
        return self.get(version)

    def _copy_in(self, artifact: Path, target: Path) -> None:
        """Link or copy the artifact's files beside `target`, then rename: a version appears
        whole or not at all."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=self.root))
        try:
            for file in sorted(artifact.iterdir()):
                if file.is_file() and file.name == CONFIG_FILE:
                    shutil.copy2(file, tmp / file.name)  # small, and rewritten in place by export
                elif file.is_file():
                    _link_or_copy(file, tmp / file.name)
            now = int(time.time() * 1000)
            _write_json(tmp / ENTRY_FILE, _entry_json(str(artifact.resolve()), now, {}))
            try:
                tmp.rename(target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # registered meanwhile: same files
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _entry_json(source: str, registered_at_ms: int, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"source": source, "registered_at_ms": registered_at_ms, "metrics": metrics}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    replace_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
