"""Server logs: one JSON object a line (default) or plain text, on stderr.

A line holds time, level, logger and message, plus whatever the call site passed in
``extra=`` (the access log: request_id, method, code, duration_ms, peer, client): JSON
fields, or key=value after a text line's message. Nothing a call site does not pass is
logged: no metadata, no tokens, no image bytes.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Literal

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line for a person: the message, then the call site's `extra=` as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        fields = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        return super().formatMessage(record) + (f"  {fields}" if fields else "")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """What the call site passed in `extra=`."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


def configure_logging(form: Literal["json", "text"], verbose: bool = False) -> None:
    """Replace the root handlers with one stderr handler in the chosen form."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
