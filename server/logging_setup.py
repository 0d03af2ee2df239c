"""Server logs: one JSON object a line (default) or plain text, on stderr.

A JSON line holds time, level, logger and message, plus whatever the call site passed in
``extra=`` (the access log: request_id, method, code, duration_ms, peer, client). Nothing a
call site does not pass is logged: no metadata, no tokens, no image bytes.
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
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(form: Literal["json", "text"], verbose: bool = False) -> None:
    """Replace the root handlers with one stderr handler in the chosen form."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
