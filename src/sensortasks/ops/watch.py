"""``sensortasks watch``: a live rich view of ``ops/#`` for operators.

`WatchState.apply` folds messages into a small state (pure, never raises on bad
input) and `render` draws it, so both are testable without a terminal or a broker.
The header says whether we are connected (`Link`): a broker that is down is retried
with back off and said so; a refused login ends the watch at once (`BrokerRefused`),
since no retry can fix it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import aiomqtt
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape  # what sensors and peers send is text, never markup
from rich.panel import Panel
from rich.table import Table

from sensortasks.domain import TaskStatus
from sensortasks.mqtt import Backoff, MqttTarget, new_client, reason, refusal, refused, unique_identifier
from sensortasks.protocol import Topics
from sensortasks.protocol.topics import OpsTopic

#: The columns of "Tasks by status", in lifecycle order; ``ops/stats`` counts by `TaskStatus.label`.
STATUSES = tuple(
    s.label
    for s in (TaskStatus.PENDING, TaskStatus.ONGOING, TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED)
)
RECENT = 20
#: ``(first, max)`` seconds between reconnects (`Backoff`: doubling, jittered).
RECONNECT_BACKOFF_S = (0.5, 10.0)
REDRAW_S = 0.25


@dataclass
class Link:
    """The watch's own connection to the broker, as the header shows it."""

    host: str = "127.0.0.1"
    port: int = 1883
    phase: Literal["connecting", "connected", "disconnected", "refused"] = "connecting"
    reason: str | None = None
    #: `time.monotonic()` of the next attempt while disconnected.
    retry_at: float | None = None

    @property
    def connected(self) -> bool:
        return self.phase == "connected"

    def describe(self, now: float | None = None) -> str:
        where = f"{self.host}:{self.port}"
        if self.phase == "connected":
            return f"connected to {where}"
        if self.phase == "refused":
            return f"login refused by {where}: {self.reason}"
        if self.phase == "connecting" or self.reason is None:
            return f"connecting to {where}"
        wait = max(0.0, (self.retry_at or 0.0) - (time.monotonic() if now is None else now))
        return f"disconnected from {where}: {self.reason}; retrying in {wait:.0f} s"


@dataclass
class WatchState:
    topics: Topics = field(default_factory=Topics)
    link: Link = field(default_factory=Link)
    tasks: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    sensors_online: int | None = None
    #: Who published the last ``ops/stats``, and whether it said it was online.
    stats_instance: str | None = None
    stats_online: bool | None = None
    stats_at: str | None = None
    dispatchers: dict[str, bool] = field(default_factory=dict)
    transitions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    rejections: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    #: The last ``ops/rollouts/{id}`` copy of each rollout (the newest `RECENT` kept).
    rollouts: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: int = 0

    def apply(self, topic: str, payload: bytes) -> None:
        """Fold one ``ops/...`` message in; anything malformed is ignored."""
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        self.messages += 1
        match self.topics.parse_ops(topic):
            case OpsTopic(kind="stats"):
                self._stats(data)
            case OpsTopic(kind="event"):
                self.transitions.appendleft(data)
            case OpsTopic(kind="rejected"):
                self.rejections.appendleft(data)
            case OpsTopic(kind="dispatcher", instance=str(instance)) if isinstance(data.get("online"), bool):
                self.dispatchers[instance] = data["online"]
            case OpsTopic(kind="rollout") if isinstance(data.get("rollout_id"), int):
                self.rollouts.pop(data["rollout_id"], None)
                self.rollouts[data["rollout_id"]] = data
                while len(self.rollouts) > RECENT:
                    del self.rollouts[next(iter(self.rollouts))]

    def _stats(self, data: dict[str, Any]) -> None:
        tasks = data.get("tasks")
        if isinstance(tasks, dict):
            self.tasks = {k: v for k, v in tasks.items() if isinstance(k, str) and isinstance(v, int)}
        for key in ("dispatch_rate", "complete_rate"):
            if isinstance(data.get(key), int | float):
                self.rates[key] = float(data[key])
        if isinstance(data.get("sensors_online"), int):
            self.sensors_online = data["sensors_online"]
        self.stats_instance = data["instance"] if isinstance(data.get("instance"), str) else None
        self.stats_online = data["online"] if isinstance(data.get("online"), bool) else None
        self.stats_at = data["at"] if isinstance(data.get("at"), str) else None


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, title=title, title_justify="left", expand=True)


LINK_STYLE = {"connected": "green", "connecting": "yellow", "disconnected": "red", "refused": "bold red"}


def _stats_source(state: WatchState) -> str:
    if state.stats_instance is None:
        return ""
    who = escape(state.stats_instance)
    at = f" at {escape(state.stats_at)}" if state.stats_at else ""
    if state.stats_online is False:
        return f"\n[red]stats from {who}{at}: that dispatcher has stopped (counts as it left them)[/red]"
    return f"\nstats from {who}{at}"


def render(state: WatchState, *, now: float | None = None) -> RenderableType:
    counts = _table("Tasks by status", *STATUSES)
    counts.add_row(*(str(state.tasks.get(s, "-")) for s in STATUSES))
    style = LINK_STYLE[state.link.phase]
    summary = (
        f"[{style}]● {escape(state.link.describe(now))}[/{style}]\n"
        f"dispatch {state.rates.get('dispatch_rate', 0):.1f}/s · complete {state.rates.get('complete_rate', 0):.1f}/s"
        f" · sensors online {'-' if state.sensors_online is None else state.sensors_online}"
        f" · messages {state.messages}" + _stats_source(state)
    )
    dispatchers = _table("Dispatchers", "instance", "state")
    for name, online in sorted(state.dispatchers.items()):
        dispatchers.add_row(escape(name), "[green]online[/green]" if online else "[red]offline[/red]")
    transitions = _table("Recent transitions", "at", "task", "sensor", "type", "from → to", "attempt", "reason")
    for t in state.transitions:
        step = f"{t.get('from') or '·'} → {t.get('to')}"
        row = (
            t.get("at"),
            t.get("task_id"),
            t.get("sensor_serial"),
            t.get("type"),
            step,
            t.get("attempt"),
            t.get("reason"),
        )
        transitions.add_row(*("" if v is None else escape(str(v)) for v in row))
    rollouts = _table("Rollouts", "id", "name", "state", "done / targets", "error", "in flight", "rate/min")
    for rollout_id, r in sorted(state.rollouts.items(), reverse=True):
        totals: dict[str, Any] = r["totals"] if isinstance(r.get("totals"), dict) else {}
        in_flight = _count(totals, "pending") + _count(totals, "ongoing")
        done = f"{_count(totals, 'completed')} / {_count(totals, 'targets')}"
        cells = (rollout_id, r.get("name"), r.get("state"), done, _count(totals, "error"), in_flight)
        rollouts.add_row(*(escape(str(v)) for v in (*cells, r.get("rate_per_minute") or "-")))
    rejections = _table("Recent rejections", "at", "topic", "reason")
    for r in state.rejections:
        rejections.add_row(*(escape(str(r.get(k, ""))) for k in ("at", "topic", "reason")))
    parts = (counts, dispatchers, *((rollouts,) if state.rollouts else ()), transitions, rejections)
    return Group(Panel(summary, title="sensortasks"), *parts)


def _count(totals: dict[str, Any], key: str) -> int:
    value = totals.get(key)
    return value if isinstance(value, int) else 0


async def watch(
    *,
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    topics: Topics | None = None,
    seconds: float | None = None,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
) -> WatchState:
    """Show ``ops/#`` live until `stop` is set or `seconds` have passed, reconnecting with back
    off; returns the final state (`state.link` says whether it is connected). With a username
    (an operator account, ``sensortasks mqtt-clients add --ops``) it connects with that username
    as its client id, the one the account is bound to.

    Raises `BrokerRefused` as soon as the broker refuses the login.
    """
    state = WatchState(topics=topics or Topics(), link=Link(host=host, port=port))
    # Redrawn from this loop, not by rich's refresh thread: the state is only touched here.
    with Live(render(state), console=console, auto_refresh=False) as live:
        follow = asyncio.ensure_future(_follow(state, username, password, tls_context))
        waits = {follow} | ({asyncio.ensure_future(stop.wait())} if stop is not None else set())
        redraw = asyncio.ensure_future(_redraw(live, state))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*waits, redraw):
                task.cancel()
            await asyncio.gather(*waits, redraw, return_exceptions=True)
            live.update(render(state), refresh=True)
        if follow.done() and not follow.cancelled() and (failure := follow.exception()) is not None:
            raise failure
    return state


async def _redraw(live: Live, state: WatchState) -> None:
    while True:
        live.update(render(state), refresh=True)
        await asyncio.sleep(REDRAW_S)


async def _follow(
    state: WatchState, username: str | None, password: str | None, tls_context: ssl.SSLContext | None
) -> None:
    link = state.link
    target = MqttTarget(link.host, link.port, username, password, tls=tls_context is not None)
    # Broker accounts are bound to a client id equal to their username (an ops account's).
    identifier = username or unique_identifier("sensortasks-watch")
    backoff = Backoff(*RECONNECT_BACKOFF_S)
    while True:
        link.phase = "connecting"
        try:
            async with new_client(target, identifier=identifier, ssl_context=tls_context) as client:
                await client.subscribe(state.topics.ops_all, qos=1)
                link.phase, link.reason, link.retry_at = "connected", None, None
                backoff.reset()
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    state.apply(str(message.topic), payload)
        except aiomqtt.MqttError as exc:
            why = refusal(exc)
            if why is not None:
                link.phase, link.reason = "refused", why
                raise refused(link.host, link.port, username, why) from None
            link.phase, link.reason = "disconnected", reason(exc)
            delay = backoff.next()
            link.retry_at = time.monotonic() + delay
            await asyncio.sleep(delay)
