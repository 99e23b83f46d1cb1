"""``/v1/rollouts``: create, list, get, pause, resume and cancel rollouts (SPEC section 10).

Tenant isolation as for tasks: another customer's rollout is a 404, never a 403, and never listed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from sensortasks.api import examples
from sensortasks.api.deps import CustomerId
from sensortasks.api.params import decode_cursor, encode_cursor
from sensortasks.api.responses import V1, error, errors, ok
from sensortasks.api.rollout_examples import ROLLOUT, ROLLOUT_CANCELLED, ROLLOUT_CREATED, ROLLOUT_LIST
from sensortasks.api.rollout_models import RolloutCancel, RolloutCreate, RolloutPublic, RolloutsPublic
from sensortasks.domain.rollout import RolloutState
from sensortasks.service.rollouts import RolloutService

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])
#: Not a bound: an id no rollout has (however large) is a 404, not a 422.
RolloutId = Annotated[int, Path(description="The rollout's id.", examples=[ROLLOUT["id"]])]
_NOT_FOUND = error(
    404,
    "No such rollout, or it belongs to another customer.",
    examples.error("not_found", f"rollout {ROLLOUT['id']} not found"),
)
_FINISHED = error(
    409,
    "The rollout has finished (completed, aborted or cancelled): its state can no longer change.",
    examples.error(
        "conflict", f"rollout {ROLLOUT['id']} is completed and can no longer be paused", {"state": "completed"}
    ),
)


def _rollouts(request: Request) -> RolloutService:
    service: RolloutService = request.app.state.rollouts
    return service


Rollouts = Annotated[RolloutService, Depends(_rollouts)]


@router.post(
    "",
    status_code=201,
    summary="Create a rollout",
    responses={
        201: ok("The new rollout with its targets (`scheduled` or `running`).", ROLLOUT_CREATED),
        **errors(*V1, 400, 422),
    },
)
async def create_rollout(body: RolloutCreate, rollouts: Rollouts, customer_id: CustomerId) -> RolloutPublic:
    """Its targets are fixed now (`sensors` and the sensors `selector` matches; a `continuous`
    one gains those that match later). A listed sensor that is not yours is a 422 naming it
    (`sensors.<index>`), and so is a rollout with no target at all; nothing is created then."""
    return RolloutPublic.of(await rollouts.create(body, customer_id))


@router.get(
    "",
    summary="List rollouts, newest first",
    responses={200: ok("A page of rollouts.", ROLLOUT_LIST), **errors(*V1, 422)},
)
async def list_rollouts(
    rollouts: Rollouts,
    customer_id: CustomerId,
    state: Annotated[RolloutState | None, Query(description="Only rollouts in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Rollouts per page, 1-1000.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page")] = None,
) -> RolloutsPublic:
    before = decode_cursor(cursor) if cursor else None
    rows, has_more = await rollouts.page(customer_id, state=state, before_id=before, limit=limit)
    next_cursor = encode_cursor(rows[-1].id) if has_more and rows else None
    return RolloutsPublic(data=[RolloutPublic.of(r) for r in rows], has_more=has_more, next_cursor=next_cursor)


@router.get(
    "/{rollout_id}",
    summary="Get a rollout, with its totals",
    responses={200: ok("The rollout.", ROLLOUT), **errors(*V1, 422), 404: _NOT_FOUND},
)
async def get_rollout(rollout_id: RolloutId, rollouts: Rollouts, customer_id: CustomerId) -> RolloutPublic:
    return RolloutPublic.of(await rollouts.get(rollout_id, customer_id))


_ACTION_ERRORS = {**errors(*V1, 400, 422), 404: _NOT_FOUND, 409: _FINISHED}


@router.post(
    "/{rollout_id}/pause",
    summary="Pause a rollout",
    responses={200: ok("The rollout, `paused`.", ROLLOUT | {"state": "paused"}), **_ACTION_ERRORS},
)
async def pause_rollout(rollout_id: RolloutId, rollouts: Rollouts, customer_id: CustomerId) -> RolloutPublic:
    """No new task starts until it is resumed; its tasks in flight go on. Pausing a paused one changes nothing."""
    return RolloutPublic.of(await rollouts.act(rollout_id, "pause", customer_id))


@router.post(
    "/{rollout_id}/resume",
    summary="Resume a paused rollout",
    responses={200: ok("The rollout, `running` (or `scheduled` before its start).", ROLLOUT), **_ACTION_ERRORS},
)
async def resume_rollout(rollout_id: RolloutId, rollouts: Rollouts, customer_id: CustomerId) -> RolloutPublic:
    """Tasks start again at its pace, without a burst for the time it was paused."""
    return RolloutPublic.of(await rollouts.act(rollout_id, "resume", customer_id))


@router.post(
    "/{rollout_id}/cancel",
    summary="Cancel a rollout",
    responses={200: ok("The rollout, `cancelled`.", ROLLOUT_CANCELLED), **_ACTION_ERRORS},
)
async def cancel_rollout(
    rollout_id: RolloutId,
    rollouts: Rollouts,
    customer_id: CustomerId,
    body: Annotated[RolloutCancel | None, Body(description="Optional: `in_flight` is `finish` by default.")] = None,
) -> RolloutPublic:
    """No target that has no task yet gets one; its tasks in flight finish (`finish`, the default)
    or are cancelled with it (`cancel`)."""
    in_flight = (body or RolloutCancel()).in_flight
    return RolloutPublic.of(await rollouts.act(rollout_id, "cancel", customer_id, in_flight=in_flight))
