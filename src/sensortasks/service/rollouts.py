"""Customers' rollouts (SPEC section 10): create, read, list, pause, resume and cancel, for the
REST routes and the CLI; the pacing itself is the dispatcher's (`TaskStore.advance_rollouts`).

The service fills in the server's task defaults, words the store's errors for the caller, and
wakes the in-process dispatcher after a change (others see it at their next pacing round).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, Protocol

from sensortasks.config import Settings
from sensortasks.domain.rollout import RolloutState
from sensortasks.service.tasks import checked_id, unregistered_named
from sensortasks.store import TaskStore, utcnow
from sensortasks.store.records import NewRollout, RolloutInfo

log = logging.getLogger(__name__)

Action = Literal["pause", "resume", "cancel"]
InFlight = Literal["finish", "cancel"]


class RolloutDraft(Protocol):
    """A validated create body (`api.rollout_models.RolloutCreate`): it knows its store form."""

    def new(self, *, max_attempts: int, timeout_s: int) -> NewRollout: ...


class RolloutService:
    def __init__(self, settings: Settings, store: TaskStore, wake: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        #: Tells the in-process dispatcher that a rollout changed (`Dispatcher.notify_rollouts`); None without one.
        self.wake = wake

    async def create(self, body: RolloutDraft, customer_id: int | None) -> RolloutInfo:
        """Create the rollout with its targets: with customers, only their own sensors (a listed
        one that is not theirs is named by its index, ``sensors.<index>``)."""
        new = body.new(max_attempts=self.settings.max_attempts, timeout_s=self.settings.default_timeout_s)
        with unregistered_named(new.sensors or (), "sensors.{}"):
            rollout = await self.store.create_rollout(new, customer_id=customer_id, now=utcnow())
        log.info("rollout %d %r created: %d targets", rollout.id, rollout.name, rollout.totals.targets)
        self._changed()
        return rollout

    async def get(self, rollout_id: int, customer_id: int | None) -> RolloutInfo:
        return await self.store.get_rollout(checked_id(rollout_id, "rollout"), customer_id=customer_id)

    async def page(
        self, customer_id: int | None, *, state: RolloutState | None, before_id: int | None, limit: int
    ) -> tuple[list[RolloutInfo], bool]:
        """A page of the customer's rollouts, newest first (`before_id`: the keyset cursor), and whether more follow."""
        return await self.store.list_rollouts(customer_id=customer_id, state=state, before_id=before_id, limit=limit)

    async def act(
        self, rollout_id: int, action: Action, customer_id: int | None, *, in_flight: InFlight = "finish"
    ) -> RolloutInfo:
        """Pause, resume or cancel (its tasks in flight finishing or cancelled with it); a Conflict
        when the rollout's state forbids it (it has finished)."""
        rollout = await self.store.rollout_action(
            checked_id(rollout_id, "rollout"), action, customer_id=customer_id, in_flight=in_flight, now=utcnow()
        )
        log.info("rollout %d: %s (in flight: %s), now %s", rollout_id, action, in_flight, rollout.state)
        self._changed()
        return rollout

    def _changed(self) -> None:
        if self.wake is not None:
            self.wake()
