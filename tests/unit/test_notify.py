"""The wake-up payloads instances send each other (`store.notify`)."""

from __future__ import annotations

from sensortasks.store.notify import MAX_PAYLOAD, Wake, parse, payload


def test_payloads_round_trip_and_fall_back_to_every_sensor_when_too_long() -> None:
    assert parse(payload("a", [3, 1, 3])) == Wake("a", (1, 3))
    assert parse(payload("a|b", ())) == Wake("a|b", ())  # the origin may hold the separator
    assert parse(payload("a", None)) == Wake("a", None)
    many = range(10**15, 10**15 + 1000)
    assert len(payload("a", many).encode()) < MAX_PAYLOAD
    assert parse(payload("a", many)) == Wake("a", None)


def test_foreign_notifications_are_not_ours() -> None:
    assert parse("no separator") is None
    assert parse("a|1,x") is None
