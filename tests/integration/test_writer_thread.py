"""SQLite's hot write transactions run whole on the writer thread (`StoreBase._transact`): the
event loop goes on while one runs, and a caller cancelled meanwhile does not lose what it
committed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from sqlalchemy import Connection

from sensortasks.store import NewTask, TaskStore, Transition, utcnow
from sensortasks.store.tasks import insert_tasks
from tests.conftest import only_on

SERIAL = 820_000_000_000_000
#: Long enough for any loaded machine; a body that blocked the loop would hold it this long.
GIVE_UP_S = 10.0


#: The writer thread is SQLite's alone: PostgreSQL's transactions stay on the loop.
pytestmark = only_on("sqlite")


def _create_when(conn: Connection, go: threading.Event, began: threading.Event) -> int:
    """Create one task once `go` is set (`began` says the body is running)."""
    began.set()
    if not go.wait(GIVE_UP_S):
        raise TimeoutError("never told to go on")
    tasks = [NewTask(SERIAL, "update_firmware", "f", 3, 60)]
    return insert_tasks(conn, tasks, customer_id=None, now=utcnow(), origin="").ids[0]


async def test_the_loop_goes_on_while_a_write_transaction_runs(store: TaskStore) -> None:
    """The body waits for a callback of the loop: on the loop's own thread (aiosqlite through
    SQLAlchemy's greenlets) that callback could never run."""
    go, began = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def body(conn: Connection) -> int:
        ran_on.append(threading.get_ident())
        return _create_when(conn, go, began)

    asyncio.get_running_loop().call_later(0.01, go.set)
    task_id = await asyncio.wait_for(store._transact(body), GIVE_UP_S)
    [thread] = ran_on
    assert thread != loop_thread
    assert (await store.get(task_id)).sensor_serial == SERIAL


async def test_a_cancelled_caller_keeps_what_its_transaction_committed(store: TaskStore) -> None:
    fed: list[list[tuple[int, Transition]]] = []

    def listener(events: Sequence[tuple[int, Transition]]) -> None:
        fed.append(list(events))

    store.watch_commits(listener)
    go, began = threading.Event(), threading.Event()
    writing = asyncio.ensure_future(store._transact(_create_when, go, began))
    assert await asyncio.to_thread(began.wait, GIVE_UP_S)
    writing.cancel()
    await asyncio.sleep(0)  # the cancellation reaches the caller while the body still waits
    go.set()
    with pytest.raises(asyncio.CancelledError):
        await writing
    # Committed, and fed to the listener before the cancellation went on.
    [[(_event_id, created)]] = fed
    assert (await store.get(created.task_id)).sensor_serial == SERIAL
    # The writer is free again.
    assert (
        len(await store.create([NewTask(SERIAL, "update_firmware", "f", 3, 60)], customer_id=None, now=utcnow())) == 1
    )
