"""Wake-ups between instances on PostgreSQL: ``NOTIFY`` in the writing transaction (delivered
at its commit, dropped with its rollback), ``LISTEN`` on a connection of each dispatcher's own.

A payload is ``origin|serials``: the writing instance, then the sensors whose queues may move
on (comma-separated; ``*`` for "look at every sensor" when they do not fit; empty when only
new events wait for the outbox). The sweep every dispatcher runs anyway stays the safety net:
a notification lost with a dropped LISTEN connection costs latency, never a task. SQLite has
one process to wake, in process, and nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "sensortasks_wake"
#: PostgreSQL refuses payloads of 8000 bytes and more.
MAX_PAYLOAD = 7900
EVERY_SENSOR = "*"
RECONNECT_S = 0.5
RECONNECT_MAX_S = 10.0
#: A silent connection is pinged this often: a partition is noticed without TCP keepalives.
PING_S = 5.0
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


@dataclass(frozen=True, slots=True)
class Wake:
    """One notification: who wrote, and which sensors (None: every sensor; empty: none)."""

    origin: str
    serials: tuple[int, ...] | None


OnWake = Callable[[Wake], None]


def payload(origin: str, serials: Iterable[int] | None) -> str:
    body = EVERY_SENSOR if serials is None else ",".join(str(s) for s in sorted(set(serials)))
    text_ = f"{origin}|{body}"
    return text_ if len(text_.encode()) < MAX_PAYLOAD else f"{origin}|{EVERY_SENSOR}"


def parse(raw: str) -> Wake | None:
    """The notification in `raw`, or None if it is not one of ours (logged, ignored)."""
    origin, sep, body = raw.rpartition("|")
    if not sep:
        return None
    if body == EVERY_SENSOR:
        return Wake(origin, None)
    try:
        return Wake(origin, tuple(int(s) for s in body.split(",") if s))
    except ValueError:
        return None


def notify(conn: Connection, origin: str, serials: Iterable[int] | None) -> None:
    """Wake the other instances when this transaction commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload(origin, serials)})


async def listen(url: str, on_wake: OnWake) -> None:
    """Feed notifications to `on_wake` until cancelled, reconnecting with back off. After
    every (re)connect it reports a wake-up of every sensor: what was notified meanwhile is lost."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        await asyncio.Future()  # nothing to listen to: one process, woken in process
    delay = RECONNECT_S
    while True:
        connecting = asyncio.ensure_future(
            asyncpg.connect(
                host=parsed.host,
                port=parsed.port,
                user=parsed.username,
                password=parsed.password,
                database=parsed.database,
                timeout=RECONNECT_MAX_S,
            )
        )
        try:
            # Shielded: asyncpg cancelled mid-handshake leaves a future whose error nobody reads.
            conn = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(_discard)
            raise
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("cannot LISTEN for wake-ups (%s); retrying in %.1f s", exc, delay)
        else:
            delay = RECONNECT_S
            try:
                await _listen_on(conn, on_wake)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("the LISTEN connection for wake-ups failed (%s); reconnecting", exc)
            finally:
                conn.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_S)


async def _listen_on(conn: asyncpg.Connection, on_wake: OnWake) -> None:
    """Until `conn` is lost (closed, or silent to a ping)."""
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _conn: lost.set())
    await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, raw: _deliver(raw, on_wake))
    on_wake(Wake("", None))
    await _until_lost(conn, lost)
    log.warning("the LISTEN connection for wake-ups was lost; reconnecting")


async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
    while not lost.is_set():
        try:
            await asyncio.wait_for(lost.wait(), PING_S)
        except TimeoutError:
            try:
                await conn.execute("SELECT 1", timeout=PING_S)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                return


def _discard(connecting: asyncio.Future[asyncpg.Connection]) -> None:
    """Close a connection that was still being made when listening was cancelled."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().terminate()


def _deliver(raw: str, on_wake: OnWake) -> None:
    wake = parse(raw)
    if wake is None:
        log.warning("ignored a wake-up that is not ours: %.100r", raw)
        return
    on_wake(wake)
