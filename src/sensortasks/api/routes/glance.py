"""``/v1/overview`` and ``/v1/events``: a customer's fleet at a glance, and its task transitions
live as server-sent events (what the console's overview and live strip show)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from sensortasks.api.deps import CustomerId, Glance
from sensortasks.api.glance_models import EVENT_STREAM, OVERVIEW, OverviewPublic
from sensortasks.api.responses import V1, errors, ok
from sensortasks.dispatcher.stats import event_json
from sensortasks.protocol.topics import MAX_ID
from sensortasks.service.glance import KEEPALIVE_S, STREAM_S, Batch
from sensortasks.store.engine import unavailable
from sensortasks.store.glance import FEED_BACKLOG

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")


@router.get(
    "/overview",
    summary="Your fleet at a glance: tasks by status, sensors online, the last hour's rates",
    tags=["overview"],
    responses={200: ok("The overview.", OVERVIEW), **errors(*V1, 422)},
)
async def get_overview(glance: Glance, customer_id: CustomerId) -> OverviewPublic:
    """Counts now, and attempts sent and tasks completed in each of the last 60 minutes. Its cost
    grows with your tasks touched in the last hour and your number of tasks (read from an index
    alone), never with the whole history of their events."""
    return OverviewPublic.of(await glance.overview(customer_id))


def _frames(batch: Batch) -> str:
    """A batch as server-sent events; a keep-alive is a comment that carries the cursor."""
    if not batch.events:
        return f": keep-alive\nid: {batch.cursor}\n\n"
    return "".join(f"id: {i}\nevent: transition\ndata: {event_json(t).decode()}\n\n" for i, t in batch.events)


@router.get(
    "/events",
    summary="Your tasks' transitions, live (server-sent events)",
    tags=["events"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A `text/event-stream` that stays open: one event per transition of one of your "
            "tasks (`event: transition`, `data`: the `ops/events` JSON, `id`: where to resume after it, the "
            "event's id or, for one committed after a later one, the highest id sent before it), and a comment "
            f"with the current `id` after {KEEPALIVE_S:.0f} s of silence. It ends after {STREAM_S:.0f} s "
            "(or when the server stops): reconnect with `Last-Event-ID` to go on where it ended.",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": EVENT_STREAM}},
        },
        **errors(*V1, 422),
    },
)
async def stream_events(
    glance: Glance,
    customer_id: CustomerId,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_ID,
            description="Start after this event id (an `id` this stream sent); without it (and without "
            "`Last-Event-ID`) the stream starts now. "
            f"At most the last {FEED_BACKLOG:,} events of all customers are looked back on.",
        ),
    ] = None,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_ID,
            description="The last `id` received, as a reconnecting client sends it; it wins over `after`.",
        ),
    ] = None,
) -> StreamingResponse:
    """Tails the task events table (the rows the outbox publishes on `ops/events`), for your tasks
    only, from every instance sharing the database; new events arrive within about half a second.
    `EventSource` cannot send the `Authorization` header: read it with `fetch`."""
    start = await glance.cursor(last_event_id if last_event_id is not None else after)

    async def stream() -> AsyncIterator[str]:
        yield f": start\nid: {start}\n\n"  # sent at once, so that the client knows it is connected
        try:
            async for batch in glance.follow(customer_id, start):
                yield _frames(batch)
        except Exception as exc:
            if unavailable(exc) is None:
                raise
            log.warning("event stream of customer %s ends: database unavailable: %s", customer_id, exc)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
