"""`service.glance.Tail`: a live tail misses no event committed after one with a higher id (as
PostgreSQL can), delivers none twice, and its resume tokens only grow."""

from __future__ import annotations

from datetime import UTC, datetime

from sensortasks.domain import TaskStatus
from sensortasks.service.glance import Tail
from sensortasks.store import Transition
from sensortasks.store.glance import FEED_BATCH


class Table:
    """The committed events, as `TaskStore.transitions_after` reads them (one customer)."""

    def __init__(self) -> None:
        self.committed: dict[int, Transition] = {}

    def commit(self, *ids: int) -> None:
        for i in ids:
            self.committed[i] = Transition(
                i, 1, "update_firmware", None, TaskStatus.PENDING, 0, None, datetime.now(UTC)
            )

    async def transitions_after(
        self,
        after_id: int,
        *,
        customer_id: int | None,  # noqa: ARG002 (one customer's table)
        limit: int = FEED_BATCH,
    ) -> tuple[list[tuple[int, Transition]], int]:
        found = sorted((i, t) for i, t in self.committed.items() if i > after_id)[:limit]
        newest = max(self.committed, default=0)
        return found, found[-1][0] if len(found) == limit else max(after_id, newest)


async def test_a_late_commit_is_delivered_once_with_a_token_that_never_goes_back() -> None:
    table, tail = Table(), Tail(0)
    table.commit(1, 3)  # 2 took its id first and has not committed yet
    assert [(token, t.task_id) for token, t in await tail.read(table, None)] == [(1, 1), (3, 3)]
    table.commit(2)
    assert [(token, t.task_id) for token, t in await tail.read(table, None)] == [(3, 2)]
    assert await tail.read(table, None) == []
    assert tail.cursor == 3


async def test_more_than_a_batch_at_once_is_read_in_one_go() -> None:
    table, tail = Table(), Tail(0)
    table.commit(*range(1, 2 * FEED_BATCH + 11))
    assert len(await tail.read(table, None)) == 2 * FEED_BATCH + 10
    assert await tail.read(table, None) == []


async def test_past_the_settle_time_a_tail_reads_only_what_is_new() -> None:
    table, tail = Table(), Tail(0, settle_s=0)
    table.commit(1, 3)
    await tail.read(table, None)
    await tail.read(table, None)  # the mark before 3 is now older than the settle time
    table.commit(2, 4)
    assert [t.task_id for _, t in await tail.read(table, None)] == [4]
