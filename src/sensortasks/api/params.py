"""Query parameters: time filters in the seed's format, ISO 8601 or a plain date (UTC), and the
opaque keyset cursors of the lists."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, date, datetime, time, timedelta

from sensortasks.errors import InvalidInput
from sensortasks.protocol.topics import MAX_ID

SEED_FORMAT = "%Y-%m-%d %H:%M:%S"
FORMATS_HELP = "use YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' or ISO 8601 (UTC unless an offset is given)"


def parse_time(field: str, text: str | None, *, until: bool) -> datetime | None:
    """Parse a filter bound. `until` bounds are inclusive: a date covers its whole day,
    a time to the second covers that second."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if len(text) == 10:  # noqa: PLR2004
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if until else start  # may overflow: caught below
        value = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if until:
            value += timedelta(seconds=1) if value.microsecond == 0 else timedelta(microseconds=1)
    except ValueError:
        raise InvalidInput(f"{field}: {text!r} is not a time; {FORMATS_HELP}", details={"field": field}) from None
    except OverflowError:
        raise InvalidInput(f"{field}: {text!r} is out of range", details={"field": field}) from None
    return value


def encode_cursor(last: int) -> str:
    """The cursor after `last`, the key (a task id, a serial) the page ended on."""
    return base64.urlsafe_b64encode(f"v1:{last}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1" or not value.isdigit() or not 0 < int(value) <= MAX_ID:
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor: not a cursor returned by this API", details={"field": "cursor"}) from None
