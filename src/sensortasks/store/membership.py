"""Who is in the group of dispatcher instances, who leads it, and whose work to recover: pure.

Every instance beats (`plan_beat`) every quarter of the instance timeout, in one transaction
that holds the ``leader`` lease row locked, so beats are serialised and each sees the others'
latest. `TaskStore` and `sensortasks.testing.InMemoryStore` both apply the plan, as they both
apply `store.changes`.

Recovery is the leader's, in two re-sends of every in-flight attempt (a sensor answers a
re-sent attempt it already finished with its final status again, SPEC 4.3):

1. when a member has been silent for the instance timeout: statuses delivered to it and never
   committed come back (through the members that are alive, mostly);
2. when its broker session has expired too (``seen_at`` + timeout + ``session_expiry_s``, which
   the instance reports as how long after its last beat the broker may still hold its share:
   its session expiry, plus the time a broker takes to drop a connection that fell silent): a
   broker (Mosquitto does) may route a shared subscription's messages to an offline member's
   session until then, so some answers to the first re-send may have gone there as well.

After the second, nothing of it can be held anywhere, and its row is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

LEADER = "leader"
ALIVE, RESENT_ONCE = 0, 1


@dataclass(frozen=True, slots=True)
class Member:
    """One instance's row: its heartbeat and what it reported with it."""

    instance: str
    started_at: datetime
    seen_at: datetime
    #: How long after `seen_at` the broker may still route statuses to its session.
    session_expiry_s: int
    recovered: int = ALIVE
    dispatch_rate: float = 0.0
    complete_rate: float = 0.0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Beat:
    """What one beat decided; the store writes `me`, `lease`, `resent` and `removed`."""

    me: Member
    lease: LeaseState
    leader: bool
    #: Members alive at this beat (this one included), by name.
    live: tuple[Member, ...]
    #: Members whose first re-send this beat starts (``recovered`` becomes 1).
    resent: tuple[str, ...] = ()
    #: Members whose second re-send this beat starts; their rows are deleted.
    removed: tuple[str, ...] = ()
    #: Why in-flight work must be re-sent now (empty: it need not be).
    reasons: tuple[str, ...] = field(default=())


def plan_beat(members: Mapping[str, Member], lease: LeaseState, me: Member, *, now: datetime, timeout_s: float) -> Beat:
    """`me` beats at `now`: take or renew the lease if it is free, ours or expired; as leader,
    start the recovery of members that fell silent."""
    timeout = timedelta(seconds=timeout_s)
    me = replace(me, seen_at=now, recovered=ALIVE)
    free = lease.holder is None or lease.expires_at is None or lease.expires_at <= now
    leader = free or lease.holder == me.instance
    if not leader:
        return Beat(me, lease, False, _live(members, me, now, timeout))
    others = [m for name, m in sorted(members.items()) if name != me.instance]
    resent = tuple(m.instance for m in others if m.recovered == ALIVE and m.seen_at <= now - timeout)
    removed = tuple(
        m.instance
        for m in others
        if m.recovered == RESENT_ONCE and m.seen_at + timeout + timedelta(seconds=m.session_expiry_s) <= now
    )
    reasons = [f"instance {name} went silent" for name in resent]
    reasons += [f"the broker session of instance {name} expired" for name in removed]
    if lease.holder not in (None, me.instance) and not resent:
        # The last leader re-sent on sensors' reconnects; who came back while nobody led?
        reasons.append(f"took the lead from instance {lease.holder}")
    return Beat(
        me,
        LeaseState(me.instance, now + timeout),
        True,
        _live(members, me, now, timeout),
        resent,
        removed,
        tuple(reasons),
    )


def plan_leave(lease: LeaseState, me: Member, *, now: datetime, timeout_s: float) -> tuple[Member, LeaseState]:
    """A clean stop: free the lease if held, and look silent already, so that the next leader
    recovers this instance's share (statuses queued to its session from now on) at once."""
    if lease.holder == me.instance:
        lease = LeaseState(None, None)
    return replace(me, seen_at=now - timedelta(seconds=timeout_s)), lease


def _live(members: Mapping[str, Member], me: Member, now: datetime, timeout: timedelta) -> tuple[Member, ...]:
    others = (m for name, m in members.items() if name != me.instance and m.seen_at > now - timeout)
    return tuple(sorted((me, *others), key=lambda m: m.instance))
