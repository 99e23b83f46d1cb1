"""``sensortasks watch``: a live rich view of ``ops/#`` for operators.

`WatchState.apply` folds messages into a small state (pure, never raises on bad
input) and `render` draws it, so both are testable without a terminal or a broker.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape  # what sensors and peers send is text, never markup
from rich.panel import Panel
from rich.table import Table

from sensortasks.protocol import Topics

STATUSES = ("Pending", "Ongoing", "Completed", "Error", "Cancelled")
RECENT = 20
RECONNECT_BACKOFF_S = (0.5, 10.0)


@dataclass
class WatchState:
    topics: Topics = field(default_factory=Topics)
    tasks: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    sensors_online: int | None = None
    dispatchers: dict[str, bool] = field(default_factory=dict)
    transitions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    rejections: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
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
        prefix = self.topics.ops + "/"
        levels = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        if levels == ["stats"]:
            self._stats(data)
        elif levels[:1] == ["events"] and len(levels) == 3:  # noqa: PLR2004
            self.transitions.appendleft(data)
        elif levels == ["rejected"]:
            self.rejections.appendleft(data)
        elif levels[:1] == ["dispatchers"] and len(levels) == 2 and isinstance(data.get("online"), bool):  # noqa: PLR2004
            self.dispatchers[levels[1]] = data["online"]

    def _stats(self, data: dict[str, Any]) -> None:
        tasks = data.get("tasks")
        if isinstance(tasks, dict):
            self.tasks = {k: v for k, v in tasks.items() if isinstance(k, str) and isinstance(v, int)}
        for key in ("dispatch_rate", "complete_rate"):
            if isinstance(data.get(key), int | float):
                self.rates[key] = float(data[key])
        if isinstance(data.get("sensors_online"), int):
            self.sensors_online = data["sensors_online"]


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, title=title, title_justify="left", expand=True)


def render(state: WatchState) -> RenderableType:
    counts = _table("Tasks by status", *STATUSES)
    counts.add_row(*(str(state.tasks.get(s, "-")) for s in STATUSES))
    summary = (
        f"dispatch {state.rates.get('dispatch_rate', 0):.1f}/s · complete {state.rates.get('complete_rate', 0):.1f}/s"
        f" · sensors online {'-' if state.sensors_online is None else state.sensors_online}"
        f" · messages {state.messages}"
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
    rejections = _table("Recent rejections", "at", "topic", "reason")
    for r in state.rejections:
        rejections.add_row(*(escape(str(r.get(k, ""))) for k in ("at", "topic", "reason")))
    return Group(Panel(summary, title="sensortasks"), counts, dispatchers, transitions, rejections)


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
) -> WatchState:
    """Show ``ops/#`` live until cancelled (or for `seconds`), reconnecting with back off.
    With a username (an operator account, ``sensortasks mqtt-clients add --ops``) it connects
    with that username as its client id, the one the account is bound to."""
    state = WatchState(topics=topics or Topics())
    with Live(render(state), console=console, refresh_per_second=4) as live:
        try:
            async with asyncio.timeout(seconds):
                await _follow(state, live, host, port, username, password, tls_context)
        except TimeoutError:
            pass
    return state


async def _follow(
    state: WatchState,
    live: Live,
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    tls_context: ssl.SSLContext | None,
) -> None:
    backoff = RECONNECT_BACKOFF_S[0]
    while True:
        try:
            async with aiomqtt.Client(
                host,
                port,
                username=username,
                password=password,
                # Broker accounts are bound to a client id equal to their username (an ops account's).
                identifier=username or f"sensortasks-watch-{uuid.uuid4().hex[:8]}",
                protocol=aiomqtt.ProtocolVersion.V5,
                tls_context=tls_context,
            ) as client:
                await client.subscribe(state.topics.ops_all, qos=1)
                backoff = RECONNECT_BACKOFF_S[0]
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    state.apply(str(message.topic), payload)
                    live.update(render(state))
        except aiomqtt.MqttError:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_S[1])
