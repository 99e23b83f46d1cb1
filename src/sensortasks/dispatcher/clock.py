"""Time for the dispatcher, through one seam.

Every wait of the dispatcher (ticks, "a wake-up or a timeout", a sensor's retry back
off) and every timestamp it writes goes through a `Clock`, so that a test can swap in
`sensortasks.testing.FakeClock` and drive acknowledgement timeouts, run timeouts and
back offs deterministically, in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVarTuple

from sensortasks.store import utcnow

_Args = TypeVarTuple("_Args")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for `event` at most `timeout` seconds; True if it was set."""
        ...

    def call_later(self, delay: float, callback: Callable[[*_Args], object], *args: *_Args) -> None:
        """Call `callback(*args)` from the event loop after `delay` seconds."""
        ...


class SystemClock:
    """Wall-clock time and asyncio's timers."""

    def now(self) -> datetime:
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        # Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that races
        # with the event, and the worker never stops.
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def call_later(self, delay: float, callback: Callable[[*_Args], object], *args: *_Args) -> None:
        asyncio.get_running_loop().call_later(delay, callback, *args)


SYSTEM_CLOCK = SystemClock()
