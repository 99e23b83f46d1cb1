"""The pure plan of a heartbeat (`store.membership`): who leads, and when a silent member's
in-flight work is re-sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sensortasks.store.membership import ALIVE, RESENT_ONCE, LeaseState, Member, plan_beat, plan_leave

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TIMEOUT = 10.0
EXPIRY = 30


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def member(name: str, seen: float, recovered: int = ALIVE, **rates: float) -> Member:
    return Member(name, T0, at(seen), EXPIRY, recovered, **rates)  # type: ignore[arg-type]


def test_a_free_lease_is_taken_and_a_held_one_renewed() -> None:
    first = plan_beat({}, LeaseState(), member("a", 0), now=at(0), timeout_s=TIMEOUT)
    assert (first.leader, first.lease, first.reasons) == (True, LeaseState("a", at(TIMEOUT)), ())
    renewed = plan_beat({"a": first.me}, first.lease, member("a", 0), now=at(2.5), timeout_s=TIMEOUT)
    assert (renewed.leader, renewed.lease.expires_at) == (True, at(12.5))


def test_a_lease_held_by_another_is_left_until_it_expires_then_taken_with_a_resend() -> None:
    lease = LeaseState("a", at(10))
    members = {"a": member("a", 5)}
    follower = plan_beat(members, lease, member("b", 0), now=at(9.9), timeout_s=TIMEOUT)
    assert (follower.leader, follower.lease, follower.reasons) == (False, lease, ())
    assert [m.instance for m in follower.live] == ["a", "b"]
    # "a" renewed at 5 and fell silent: at 10 its lease is over, but it is not yet silent for 10 s
    taker = plan_beat(members, lease, member("b", 0), now=at(10), timeout_s=TIMEOUT)
    assert (taker.leader, taker.lease.holder) == (True, "b")
    assert taker.reasons == ("took the lead from instance a",)
    assert taker.resent == ()


def test_a_silent_member_is_resent_at_the_timeout_and_again_once_its_session_expired() -> None:
    members = {"a": member("a", 0), "b": member("b", 0)}
    lease = LeaseState("b", at(10))
    early = plan_beat(members, lease, member("b", 0), now=at(9.9), timeout_s=TIMEOUT)
    assert (early.resent, early.removed, early.reasons) == ((), (), ())
    first = plan_beat(members, lease, member("b", 0), now=at(10), timeout_s=TIMEOUT)
    assert first.resent == ("a",)
    assert first.reasons == ("instance a went silent",)
    assert [m.instance for m in first.live] == ["b"]

    members["a"] = member("a", 0, RESENT_ONCE)
    before = plan_beat(members, first.lease, member("b", 0), now=at(TIMEOUT + EXPIRY - 0.1), timeout_s=TIMEOUT)
    assert (before.resent, before.removed, before.reasons) == ((), (), ())
    second = plan_beat(members, first.lease, member("b", 0), now=at(TIMEOUT + EXPIRY), timeout_s=TIMEOUT)
    assert second.removed == ("a",)
    assert second.reasons == ("the broker session of instance a expired",)


def test_only_the_leader_recovers() -> None:
    members = {"a": member("a", 0), "c": member("c", 100)}
    follower = plan_beat(members, LeaseState("c", at(110)), member("b", 0), now=at(100), timeout_s=TIMEOUT)
    assert (follower.leader, follower.resent, follower.removed) == (False, (), ())


def test_a_beat_says_alive_again_whatever_others_thought() -> None:
    members = {"a": member("a", 0, RESENT_ONCE)}
    beat = plan_beat(members, LeaseState(), member("a", 0), now=at(50), timeout_s=TIMEOUT)
    assert (beat.me.seen_at, beat.me.recovered) == (at(50), ALIVE)
    assert beat.resent == beat.removed == ()  # it never recovers itself


def test_leaving_frees_the_lease_and_looks_silent_at_once() -> None:
    me, lease = plan_leave(LeaseState("a", at(10)), member("a", 5), now=at(5), timeout_s=TIMEOUT)
    assert lease == LeaseState()
    assert me.seen_at == at(5 - TIMEOUT)
    successor = plan_beat({"a": me}, lease, member("b", 0), now=at(5.1), timeout_s=TIMEOUT)
    assert (successor.leader, successor.resent) == (True, ("a",))
    _, untouched = plan_leave(LeaseState("b", at(10)), member("a", 5), now=at(5), timeout_s=TIMEOUT)
    assert untouched == LeaseState("b", at(10))
