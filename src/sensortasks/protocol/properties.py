"""Bounds on the MQTT 5 properties of every message the dispatcher reads.

A broker forwards whatever properties a publisher sets (Mosquitto only checks that the
strings are UTF-8 and fit its packet size limit), and the dispatcher *publishes* to a
command's response topic: an unchecked one is a way to make it publish with a wildcard
(paho raises), to ``$SYS`` or into our own protocol topics. So the envelope is checked
before the payload, the same way on every topic; a message outside these bounds is refused
(``bad_property``) and never answered.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Longest response topic, in UTF-8 bytes (MQTT allows 65,535; ours are ``replies/<client id>/...``).
MAX_TOPIC_BYTES = 1024
#: Correlation data is echoed in the reply: bounded so a request cannot make a large answer.
MAX_CORRELATION_BYTES = 256
MAX_USER_PROPERTIES = 16
#: Name and value of one user property together, in UTF-8 bytes.
MAX_USER_PROPERTY_BYTES = 1024
MAX_CONTENT_TYPE_BYTES = 256
#: The only content type a payload may declare (parameters such as ``charset`` allowed).
JSON_CONTENT_TYPE = "application/json"
#: User properties the dispatcher reads: given twice they would be ambiguous.
SINGLE_PROPERTIES = ("authorization", "idempotency-key")


def topic_problem(topic: str) -> str | None:
    """Why nobody may publish to `topic` (None when it is a valid topic name)."""
    if not topic:
        return "is empty"
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"is longer than {MAX_TOPIC_BYTES} bytes"
    if "+" in topic or "#" in topic:
        return "contains a wildcard ('+' or '#')"
    if not topic.isprintable():
        return "contains control characters"
    if topic.startswith("$"):
        return "starts with '$' (reserved for the broker)"
    return None


def is_under(topic: str, prefix: str) -> bool:
    """`topic` lies in the subtree `prefix/#` (which, in MQTT, includes `prefix` itself)."""
    return topic == prefix or topic.startswith(prefix + "/")


def properties_problem(
    *,
    response_topic: str | None,
    correlation_data: bytes | None,
    user_properties: Sequence[tuple[str, str]],
    content_type: str | None,
) -> str | None:
    """What is wrong with a message's MQTT 5 properties, or None when all are within bounds."""
    if response_topic is not None and (problem := topic_problem(response_topic)) is not None:
        return f"response topic {problem}"
    if correlation_data is not None and len(correlation_data) > MAX_CORRELATION_BYTES:
        return f"correlation data is longer than {MAX_CORRELATION_BYTES} bytes"
    if len(user_properties) > MAX_USER_PROPERTIES:
        return f"more than {MAX_USER_PROPERTIES} user properties ({len(user_properties)})"
    names = [name.lower() for name, _ in user_properties]
    for (name, value), lower in zip(user_properties, names, strict=True):
        if len(name.encode()) + len(value.encode()) > MAX_USER_PROPERTY_BYTES:
            return f"user property {name[:32]!r} is longer than {MAX_USER_PROPERTY_BYTES} bytes"
        if lower in SINGLE_PROPERTIES and names.count(lower) > 1:
            return f"user property {lower!r} is given more than once"
    if content_type is not None:
        if len(content_type.encode()) > MAX_CONTENT_TYPE_BYTES:
            return f"content type is longer than {MAX_CONTENT_TYPE_BYTES} bytes"
        if content_type.partition(";")[0].strip().lower() != JSON_CONTENT_TYPE:
            return f"content type must be {JSON_CONTENT_TYPE}"
    return None
