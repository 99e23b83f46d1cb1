"""Example payloads of the rollout endpoints for the OpenAPI document, each the shape of a real
answer (tests/integration/test_rollout_api.py checks them against live responses)."""

from __future__ import annotations

from typing import Any

from sensortasks.protocol.commands import FILE_ID_EXAMPLE

ROLLOUT_CREATE: dict[str, Any] = {
    "name": "firmware 2.4.1, building A",
    "type": "update_firmware",
    "file_id": FILE_ID_EXAMPLE,
    "selector": {"labels": {"site": "building-a", "model": "th-200"}},
    "max_in_flight": 50,
    "rate": {"per_minute": 10, "increase": {"factor": 2, "every_completed": 100, "max_per_minute": 200}},
    "abort": {"failure_percent": 5, "min_finished": 20},
    "schedule": {"start_at": "2022-10-17 22:00:00", "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"],
                                                                  "start": "22:00", "end": "24:00"}]},
}  # fmt: skip
ROLLOUT: dict[str, Any] = {
    "id": 4711,
    "name": ROLLOUT_CREATE["name"],
    "type": "update_firmware",
    "file_id": FILE_ID_EXAMPLE,
    "max_attempts": 3,
    "timeout_s": 3600,
    "sensors": None,
    "selector": ROLLOUT_CREATE["selector"],
    "continuous": False,
    "max_in_flight": 50,
    "rate": {"per_minute": 10.0, "increase": {"factor": 2.0, "every_completed": 100, "max_per_minute": 200.0}},
    "abort": {"failure_percent": 5.0, "min_finished": 20},
    "schedule": ROLLOUT_CREATE["schedule"] | {"end_at": None},
    "state": "running",
    "totals": {"targets": 1200, "not_started": 830, "pending": 40, "ongoing": 10, "completed": 312, "error": 8,
               "cancelled": 0},
    "created_at": "2022-10-17 16:00:07",
    "updated_at": "2022-10-18 01:12:40",
    "started_at": "2022-10-17 22:00:00",
    "finished_at": None,
    "reason": None,
    "rate_per_minute": 80.0,
}  # fmt: skip
ROLLOUT_CREATED: dict[str, Any] = ROLLOUT | {
    "state": "scheduled",
    "totals": {"targets": 1200, "not_started": 1200, "pending": 0, "ongoing": 0, "completed": 0, "error": 0,
               "cancelled": 0},
    "updated_at": "2022-10-17 16:00:07",
    "started_at": None,
    "rate_per_minute": 10.0,
}  # fmt: skip
ROLLOUT_CANCELLED: dict[str, Any] = ROLLOUT | {
    "state": "cancelled",
    "updated_at": "2022-10-18 01:15:02",
    "finished_at": "2022-10-18 01:15:02",
    "reason": "cancelled by the customer",
}
ROLLOUT_LIST: dict[str, Any] = {"data": [ROLLOUT, ROLLOUT_CANCELLED | {"id": 4710}], "has_more": False,
                                "next_cursor": None}  # fmt: skip
ROLLOUT_CANCEL: dict[str, Any] = {"in_flight": "finish"}
