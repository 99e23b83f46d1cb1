"""Task statuses (ids fixed by seed 000) and the one transition table everything consults."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class TaskType(StrEnum):
    UPDATE_FIRMWARE = "update_firmware"
    UPDATE_CONFIGURATION = "update_configuration"


class TaskStatus(IntEnum):
    #: Waiting to start; includes "sent to the sensor, not yet acknowledged".
    PENDING = 1
    #: The sensor reported success. Terminal.
    COMPLETED = 2
    #: Failed for good (sensor error, not acknowledged, timed out). Terminal.
    ERROR = 3
    #: The sensor reported that it picked the task up.
    ONGOING = 4
    #: Cancelled by the customer. Terminal.
    CANCELLED = 5

    @property
    def label(self) -> str:
        """The seed's status name: ``Pending``, ``Completed``, ..."""
        return self.name.capitalize()

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @classmethod
    def parse(cls, text: str) -> TaskStatus:
        """Accept an id (``"2"``) or a name in any case (``"completed"``)."""
        text = text.strip()
        if text.isascii() and text.isdigit():
            return cls(int(text))
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown status {text!r}") from None


TERMINAL: frozenset[TaskStatus] = frozenset({TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED})
ACTIVE: frozenset[TaskStatus] = frozenset({TaskStatus.PENDING, TaskStatus.ONGOING})

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.ONGOING, TaskStatus.CANCELLED, TaskStatus.ERROR}),
    TaskStatus.ONGOING: frozenset({TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.PENDING, TaskStatus.CANCELLED}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.ERROR: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: TaskStatus) -> frozenset[TaskStatus]:
    """Statuses from which `target` may be reached (the guard of a conditional UPDATE)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
