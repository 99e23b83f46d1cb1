"""Logging set-up for the long-running commands: text for people, JSON lines for log shippers.

Records name what happened to what: pass ``extra={"task_id": ..., "sensor": ..., "action": ...}``
and the JSON format emits them as fields (the text format appends them as ``key=value``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
#: Fields a record may carry through ``extra=`` and that both formats show.
FIELDS = ("task_id", "sensor", "action", "instance")
#: Third-party loggers quieter than their default, each for a reason:
QUIET = {
    # One "setup plugin ..." INFO line per autogenerate plugin at every start (7 lines),
    # logged when ``alembic.command`` is imported; they say nothing about our schema.
    "alembic": logging.WARNING,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{n}={getattr(record, n)}" for n in FIELDS if getattr(record, n, None) is not None)
        return f"{text} [{fields}]" if fields else text


def configure(level: str = "info", fmt: LogFormat = "text") -> None:
    """Send every record at `level` and above to stderr in `fmt`, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
