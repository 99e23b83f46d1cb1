"""What a device handler gets (`Job`, one attempt of a task) and how it reports a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sensortasks.errors import SensortasksError
from sensortasks.protocol import StatusReport, TaskMessage

#: What a device handler returns: the task's result, reported with status "completed".
Handler = Callable[["Job"], Awaitable[dict[str, Any] | None]]


class TaskFailed(SensortasksError):
    """Raised by a handler to report an error; `retryable=False` asks for no retry."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Job:
    """One attempt of a task, as handed to the device handler."""

    def __init__(self, message: TaskMessage, report: Callable[[StatusReport], Awaitable[bool]]) -> None:
        self.message = message
        self.task_id = message.task_id
        self.type = message.type
        self.file_id = message.file_id
        self.attempt = message.attempt
        self.timeout_s = message.timeout_s
        #: Set when the dispatcher cancels the task or a newer attempt replaces this one.
        self.cancelled = asyncio.Event()
        #: The last progress reported, repeated when the dispatcher re-sends the task.
        self.last_progress = 0
        self._report = report

    async def progress(self, pct: int) -> None:
        """Report progress (0-100) as status "ongoing"; waits until the broker has it."""
        if not 0 <= pct <= 100:  # noqa: PLR2004
            msg = f"progress must be within 0..100, got {pct}"
            raise ValueError(msg)
        if self.cancelled.is_set():
            return
        self.last_progress = pct
        await self._report(self.ongoing_report())

    def ongoing_report(self) -> StatusReport:
        return StatusReport(
            task_id=self.task_id,
            attempt=self.attempt,
            status="ongoing",
            progress=self.last_progress,
        )
