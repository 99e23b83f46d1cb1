"""Sensor labels: the rules of a key and a value, and the text forms a person types them in.

A label is ``key: value`` set by the sensor's customer; rollouts select sensors by them
(``{"labels": {...}}``, every pair must match). Keys are 1-63 characters, letters and digits
with ``. _ / -`` inside (``region``, ``hw/rev``); values 0-63 letters, digits and ``. _ -``;
a sensor has at most 32. Narrow on purpose: a label is safe in a URL query, a topic, a
file name and a shell word without quoting.

Pure, and one place for every caller (REST bodies and queries, the store's merge, the CLI,
rollout selectors): not in ``domain/``, which may not import the errors' tree, because each
refusal is an `InvalidInput` naming the field (``labels.<key>``, ``label``) and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sensortasks.errors import InvalidInput

MAX_KEY = 63
MAX_VALUE = 63
MAX_LABELS = 32
KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$"
VALUE_PATTERN = r"^[A-Za-z0-9._-]*$"
_KEY = re.compile(KEY_PATTERN)
_VALUE = re.compile(VALUE_PATTERN)
KEY_RULE = f"a label key is 1-{MAX_KEY} letters, digits and . _ / -, beginning and ending with a letter or digit"
VALUE_RULE = f"a label value is 0-{MAX_VALUE} letters, digits and . _ -"
COUNT_RULE = f"a sensor has at most {MAX_LABELS} labels"

#: The JSON schema of a labels object, for /openapi.json (the checks are `check_labels`).
LABELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_LABELS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_KEY, "pattern": KEY_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": MAX_VALUE, "pattern": VALUE_PATTERN},
}
#: The same for a merge patch: a null removes the key.
PATCH_SCHEMA: dict[str, Any] = LABELS_SCHEMA | {
    "additionalProperties": {"anyOf": [LABELS_SCHEMA["additionalProperties"], {"type": "null"}]}
}


def _refuse(field: str, rule: str, why: str) -> InvalidInput:
    return InvalidInput(f"{field}: {why}", details={"field": field, "rule": rule})


def check_label(key: str, value: str | None, *, field: str) -> None:
    """One pair, refused as `field` (`value` None: a key being removed, only the key is checked)."""
    if not (isinstance(key, str) and len(key) <= MAX_KEY and _KEY.match(key)):
        raise _refuse(field, "label_key", f"{key!r} is not a label key: {KEY_RULE}")
    if value is not None and not (isinstance(value, str) and len(value) <= MAX_VALUE and _VALUE.match(value)):
        raise _refuse(field, "label_value", f"{value!r} is not a label value: {VALUE_RULE}")


def check_count(labels: Mapping[str, Any], *, field: str = "labels") -> None:
    if len(labels) > MAX_LABELS:
        raise _refuse(field, "too_many_labels", f"{len(labels)} labels: {COUNT_RULE}")


def check_labels(labels: Mapping[str, str], *, field: str = "labels") -> dict[str, str]:
    """A sensor's labels (or a selector's), checked: every key and value, and how many."""
    check_count(labels, field=field)
    for key, value in labels.items():
        check_label(key, value, field=f"{field}.{key}")
    return dict(labels)


def check_patch(patch: Mapping[str, str | None], *, field: str = "labels") -> dict[str, str | None]:
    """A JSON Merge Patch of labels, checked pair by pair (how many there will be is `merge`'s to say)."""
    for key, value in patch.items():
        check_label(key, value, field=f"{field}.{key}")
    return dict(patch)


def merge(labels: Mapping[str, str], patch: Mapping[str, str | None], *, field: str = "labels") -> dict[str, str]:
    """JSON Merge Patch (RFC 7396) of flat labels: a null removes its key, a string sets it."""
    merged = {key: value for key, value in labels.items() if key not in patch}
    merged |= {key: value for key, value in patch.items() if value is not None}
    check_count(merged, field=field)
    return dict(sorted(merged.items()))


def _pair(text: str, separator: str, *, field: str, form: str) -> tuple[str, str]:
    key, found, value = text.partition(separator)
    if not found:
        raise _refuse(field, "label_format", f"{text!r} is not a label: write it {form}")
    check_label(key, value, field=field)
    return key, value


def parse_selector(text: str, *, field: str = "label") -> tuple[str, str]:
    """A query's ``key:value`` (``label=region:eu``); the first ``:`` splits (keys have none)."""
    return _pair(text, ":", field=field, form="key:value")


def parse_assignment(text: str, *, field: str = "--label") -> tuple[str, str]:
    """The command line's ``key=value``; the first ``=`` splits."""
    return _pair(text, "=", field=field, form="key=value")


def _pairs(texts: Sequence[str], parse: Callable[..., tuple[str, str]], field: str) -> dict[str, str]:
    """Several pairs into one set of labels; a key given twice with two values is refused (as a
    selector it could match nothing, as an assignment one of them would be lost)."""
    pairs: dict[str, str] = {}
    for text in texts:
        key, value = parse(text, field=field)
        if pairs.get(key, value) != value:
            raise _refuse(field, "label_conflict", f"{key!r} is given as both {pairs[key]!r} and {value!r}")
        pairs[key] = value
    check_count(pairs, field=field)
    return pairs


def selector(texts: Sequence[str], *, field: str = "label") -> dict[str, str]:
    """Repeated ``key:value`` query parameters into one selector: every pair must match."""
    return _pairs(texts, parse_selector, field)


def assignments(texts: Sequence[str], *, field: str = "--label") -> dict[str, str]:
    """Repeated ``key=value`` options into labels."""
    return _pairs(texts, parse_assignment, field)
