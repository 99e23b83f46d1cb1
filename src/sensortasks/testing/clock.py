"""A clock that moves only when the test says so.

`FakeClock` implements the dispatcher's `Clock`. Time is an integer count of
microseconds, so deadlines and the timestamps the store writes are exact. Nothing that
waits on it wakes up before `advance` moves time past its deadline; timers fire in
deadline order, and after each one the clock lets the woken tasks run until every one
is parked again (`settle`).

"Parked" is what makes `settle` work without fixed sleeps, on any store: a task that has
waited on the clock once is tracked, and the system is settled when each tracked task
is waiting again (on the clock, or at a point registered with `parked`, as `FakeLink`'s
inbox and connection do) with nothing due, and every condition given to `quiet_when`
holds. A task busy on a database thread or a socket is not parked, so `settle` waits
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVarTuple

from sensortasks.dispatcher.clock import Clock

Args = TypeVarTuple("Args")
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
#: Real seconds `settle` waits for the system to become quiet before it fails the test.
SETTLE_TIMEOUT_S = 10.0
#: Consecutive quiet checks (one event-loop turn apart) that make the system settled.
QUIET_CHECKS = 3
#: Event-loop turns spun before `settle` polls with real (sub-millisecond) sleeps instead,
#: to give database threads the CPU.
SPIN_TURNS = 20
POLL_S = 0.0005


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


@dataclass(order=True)
class _Timer:
    due: int
    seq: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class FakeClock:
    """Virtual time for the dispatcher; see the module docstring for `settle`."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.start = start
        self._us = 0
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._tracked: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._parked: dict[asyncio.Task[Any], Callable[[], bool]] = {}
        self._conditions: list[Callable[[], bool]] = []

    # -- the Clock protocol ---------------------------------------------------
    def now(self) -> datetime:
        return self.start + timedelta(microseconds=self._us)

    async def sleep(self, seconds: float) -> None:
        self.track()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        timer = self._schedule(seconds, functools.partial(_resolve, woken))
        try:
            with self.parked(woken.done):
                await woken
        finally:
            timer.cancelled = True

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        self.track()
        if event.is_set():
            return True
        timed_out = asyncio.get_running_loop().create_future()
        timer = self._schedule(timeout, functools.partial(_resolve, timed_out))
        waiter = asyncio.ensure_future(event.wait())
        try:
            with self.parked(lambda: event.is_set() or timed_out.done()):
                await asyncio.wait((waiter, timed_out), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancelled = True
            waiter.cancel()
            timed_out.cancel()
        return event.is_set()

    def call_later(self, delay: float, callback: Callable[[*Args], object], *args: *Args) -> None:
        self._schedule(delay, functools.partial(callback, *args))

    # -- for tests --------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since `start`."""
        return self._us / 1_000_000

    def track(self) -> None:
        """From now on `settle` waits for the current task too, whenever it is not parked."""
        task = asyncio.current_task()
        if task is not None:
            self._tracked.add(task)

    @contextlib.contextmanager
    def parked(self, due: Callable[[], bool]) -> Iterator[None]:
        """Mark the current task as waiting; `due()` turns true once its wake-up is pending."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._tracked.add(task)
        self._parked[task] = due
        try:
            yield
        finally:
            self._parked.pop(task, None)

    def quiet_when(self, condition: Callable[[], bool]) -> None:
        """`settle` also waits for `condition()` (e.g. "every message sent was received")."""
        self._conditions.append(condition)

    async def settle(self, *, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Run, without moving time, until every tracked task is parked with nothing due."""
        deadline = time.monotonic() + timeout_s
        quiet = busy = 0
        while quiet < QUIET_CHECKS:
            if self._fire(self._us):
                quiet = busy = 0
            elif self._quiet():
                quiet, busy = quiet + 1, 0
            else:
                quiet, busy = 0, busy + 1
                if time.monotonic() > deadline:
                    raise AssertionError(f"not settled after {timeout_s} s: {self._busy()}")
            await asyncio.sleep(POLL_S if busy > SPIN_TURNS else 0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing each timer due on the way at its own instant and
        settling after each; then settle at the new time."""
        target = self._us + _micros(seconds)
        await self.settle()
        while self._fire(target):
            await self.settle()
        self._us = max(self._us, target)
        await self.settle()

    # -- plumbing -----------------------------------------------------------------
    def _schedule(self, delay: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(self._us + max(_micros(delay), 0), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def _fire(self, limit: int) -> bool:
        """Fire the earliest live timer due by `limit` (moving time to it); False if none."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers or self._timers[0].due > limit:
            return False
        timer = heapq.heappop(self._timers)
        self._us = max(self._us, timer.due)
        timer.callback()
        return True

    def _quiet(self) -> bool:
        me = asyncio.current_task()  # the settling task is not waiting
        for task in list(self._tracked):
            if task.done() or task is me:
                continue
            due = self._parked.get(task)
            if due is None or due():
                return False
        return all(condition() for condition in self._conditions)

    def _busy(self) -> str:
        me = asyncio.current_task()
        busy = [
            t
            for t in list(self._tracked)
            if not t.done() and t is not me and (t not in self._parked or self._parked[t]())
        ]
        described = [f"{t.get_name()} at {t.get_stack(limit=1)}" for t in busy]
        failing = [getattr(c, "__qualname__", repr(c)) for c in self._conditions if not c()]
        return f"running tasks {described}, unmet conditions {failing}"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


if TYPE_CHECKING:  # mypy keeps the fake in step with the protocol
    _: Clock = FakeClock()
