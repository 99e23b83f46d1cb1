"""Sensor labels through the real API (SQLite and PostgreSQL): set at registration, merge-patched,
listed by selector with keyset paging, one customer's never seen or touched by another, and
every bad label a 422 naming the field that changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sensortasks.api import examples
from sensortasks.api.params import decode_cursor
from sensortasks.store.keys import KeyStore

from .conftest import Service, ServiceFactory
from .test_api_examples import shape

SERIAL = examples.SERIAL
Headers = dict[str, str]


def invalid(response: httpx.Response, field: str) -> dict[str, Any]:
    """A 422 naming `field` (in `details`, as ours do, or in its list, as request validation does)."""
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_input"
    details = error["details"]
    named = [d["field"] for d in details] if isinstance(details, list) else [details["field"]]
    assert field in named, error
    assert error["message"].startswith(f"{field}: "), error
    return error


async def customers(service: Service, *names: str) -> list[Headers]:
    keys = KeyStore(service.store.db)
    return [{"Authorization": f"Bearer {await keys.create_key(name)}"} for name in names]


async def register(service: Service, who: Headers, serial: int, labels: dict[str, str] | None = None) -> int:
    body: dict[str, Any] = {"serial": serial} | ({} if labels is None else {"labels": labels})
    return (await service.api.post("/v1/sensors", json=body, headers=who)).status_code


async def labels_of(service: Service, who: Headers, serial: int) -> dict[str, str]:
    response = await service.api.get(f"/v1/sensors/{serial}", headers=who)
    assert response.status_code == 200, response.text
    labels: dict[str, str] = response.json()["labels"]
    return labels


async def listed(service: Service, who: Headers, *selector: str, **params: Any) -> dict[str, Any]:
    response = await service.api.get("/v1/sensors", params={"label": list(selector), **params}, headers=who)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def serials(page: dict[str, Any]) -> list[int]:
    return [sensor["serial"] for sensor in page["data"]]


async def test_labels_at_registration_and_by_merge_patch(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    (alice,) = await customers(service, "alice")
    assert await register(service, alice, SERIAL, {"region": "eu", "hw/rev": "b2", "empty": ""}) == 201
    assert await labels_of(service, alice, SERIAL) == {"region": "eu", "hw/rev": "b2", "empty": ""}

    patched = await service.api.patch(
        f"/v1/sensors/{SERIAL}", json={"labels": {"ring": "canary", "hw/rev": None, "absent": None}}, headers=alice
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["labels"] == {"region": "eu", "ring": "canary", "empty": ""}
    assert body == (await service.api.get(f"/v1/sensors/{SERIAL}", headers=alice)).json()  # GET's shape

    assert await register(service, alice, SERIAL) == 200  # registered again without labels: kept
    assert await labels_of(service, alice, SERIAL) == {"region": "eu", "ring": "canary", "empty": ""}
    assert await register(service, alice, SERIAL, {"region": "us"}) == 200  # with labels: replaced
    assert await labels_of(service, alice, SERIAL) == {"region": "us"}

    assert (await service.api.delete(f"/v1/sensors/{SERIAL}", headers=alice)).status_code == 204
    assert await register(service, alice, SERIAL) == 201  # a release forgets them
    assert await labels_of(service, alice, SERIAL) == {}


async def test_list_by_labels_with_paging(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    (alice,) = await customers(service, "alice")
    eu = [SERIAL + i for i in range(0, 10, 2)]
    for i in range(10):
        labels = {"region": "eu" if SERIAL + i in eu else "us", "ring": "canary" if i < 3 else "main"}
        assert await register(service, alice, SERIAL + i, labels) == 201

    every = await listed(service, alice)
    assert serials(every) == [SERIAL + i for i in range(10)]
    assert (every["has_more"], every["next_cursor"]) == (False, None)
    assert every["data"][0]["labels"] == {"region": "eu", "ring": "canary"}
    assert every["data"][0]["registered_at"]
    assert every["data"][0]["online"] is None
    assert serials(await listed(service, alice, "region:eu")) == eu
    assert serials(await listed(service, alice, "region:eu", "ring:canary")) == [SERIAL, SERIAL + 2]
    assert serials(await listed(service, alice, "region:eu", "ring:nowhere")) == []
    assert serials(await listed(service, alice, "hw:b2")) == []  # a label no sensor carries

    pages, cursor = [], None
    while True:
        page = await listed(service, alice, "region:eu", limit=2, **({"cursor": cursor} if cursor else {}))
        pages.append(serials(page))
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == [eu[0:2], eu[2:4], eu[4:]]


async def test_one_customer_never_sees_or_relabels_anothers_sensor(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    alice, bob = await customers(service, "alice", "bob")
    assert await register(service, alice, SERIAL, {"region": "eu"}) == 201
    assert await register(service, bob, SERIAL + 1, {"region": "eu"}) == 201

    assert serials(await listed(service, alice, "region:eu")) == [SERIAL]
    assert serials(await listed(service, bob, "region:eu")) == [SERIAL + 1]
    assert serials(await listed(service, bob)) == [SERIAL + 1]
    for serial in (SERIAL, SERIAL + 999):  # another customer's and an unknown one look the same
        refused = await service.api.patch(f"/v1/sensors/{serial}", json={"labels": {"region": "us"}}, headers=bob)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "not_found"
    assert await register(service, bob, SERIAL, {"region": "us"}) == 409  # nor by registering it
    assert await labels_of(service, alice, SERIAL) == {"region": "eu"}


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"Region!": "eu"}, "labels.Region!"),
        ({"-region": "eu"}, "labels.-region"),
        ({"region-": "eu"}, "labels.region-"),
        ({"": "eu"}, "labels."),
        ({"k" * 64: "eu"}, f"labels.{'k' * 64}"),
        ({"region": "eu west"}, "labels.region"),
        ({"region": "eu/west"}, "labels.region"),
        ({"region": "v" * 64}, "labels.region"),
        ({f"k{i}": "v" for i in range(33)}, "labels"),
        ({"region": 7}, "labels.region"),  # request validation: not a string
        ({"region": None}, "labels.region"),  # a null only removes, in a PATCH
    ],
)
async def test_bad_labels_are_422s_that_change_nothing(
    make_service: ServiceFactory, labels: dict[str, Any], field: str
) -> None:
    service = await make_service(auth="required")
    (alice,) = await customers(service, "alice")
    assert await register(service, alice, SERIAL, {"region": "eu"}) == 201

    invalid(await service.api.post("/v1/sensors", json={"serial": SERIAL + 1, "labels": labels}, headers=alice), field)
    invalid(await service.api.post("/v1/sensors", json={"serial": SERIAL, "labels": labels}, headers=alice), field)
    if None not in labels.values():
        patch = await service.api.patch(f"/v1/sensors/{SERIAL}", json={"labels": labels}, headers=alice)
        invalid(patch, field)
    assert serials(await listed(service, alice)) == [SERIAL]
    assert await labels_of(service, alice, SERIAL) == {"region": "eu"}


async def test_a_patch_over_the_limit_changes_nothing(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    (alice,) = await customers(service, "alice")
    full = {f"k{i}": "v" for i in range(32)}
    assert await register(service, alice, SERIAL, full) == 201
    over = await service.api.patch(f"/v1/sensors/{SERIAL}", json={"labels": {"one-more": "v"}}, headers=alice)
    assert invalid(over, "labels")["details"]["rule"] == "too_many_labels"
    swapped = await service.api.patch(
        f"/v1/sensors/{SERIAL}", json={"labels": {"one-more": "v", "k0": None}}, headers=alice
    )
    assert swapped.status_code == 200, swapped.text  # the count is the patched one
    assert len(await labels_of(service, alice, SERIAL)) == 32


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"label": "region"}, "label"),
        ({"label": "region=eu"}, "label"),
        ({"label": "Region!:eu"}, "label"),
        ({"label": "region:eu west"}, "label"),
        ({"label": ["region:eu", "region:us"]}, "label"),
        ({"label": [f"k{i}:v" for i in range(33)]}, "label"),
        ({"cursor": "nonsense"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
    ],
)
async def test_bad_list_parameters_are_422s(make_service: ServiceFactory, params: dict[str, Any], field: str) -> None:
    service = await make_service(auth="required")
    (alice,) = await customers(service, "alice")
    invalid(await service.api.get("/v1/sensors", params=params, headers=alice), field)


async def test_a_selector_value_may_be_empty_and_split_at_the_first_colon(make_service: ServiceFactory) -> None:
    service = await make_service()  # no customers: the registered sensors nobody owns
    assert await register(service, {}, SERIAL, {"ring": "", "hw/rev": "b2"}) == 201
    assert await register(service, {}, SERIAL + 1, {"ring": "main"}) == 201
    assert serials(await listed(service, {}, "ring:")) == [SERIAL]
    assert serials(await listed(service, {}, "hw/rev:b2")) == [SERIAL]
    invalid(await service.api.get("/v1/sensors", params={"label": "hw/rev:b2:c"}), "label")


async def test_label_examples_are_real_answers(make_service: ServiceFactory) -> None:
    service = await make_service()
    assert (await service.api.post("/v1/sensors", json=examples.SENSOR_CREATE)).status_code == 201
    assert await register(service, {}, SERIAL + 1) == 201
    await service.sensor(SERIAL)  # online: a presence to show
    sensor = (await service.api.get(f"/v1/sensors/{SERIAL}")).json()
    assert sensor["labels"] == examples.SENSOR["labels"]
    assert shape(sensor) | {"task_in_flight": "int"} == shape(examples.SENSOR)
    relabelled = (await service.api.patch(f"/v1/sensors/{SERIAL}", json=examples.LABELS_PATCH)).json()
    assert relabelled["labels"] == examples.SENSOR_RELABELLED["labels"]
    await service.api.patch(f"/v1/sensors/{SERIAL}", json={"labels": examples.SENSOR_CREATE["labels"] | {"ring": None}})
    page = (await service.api.get("/v1/sensors", params={"limit": 1})).json()
    assert page["data"][0] == examples.SENSOR_LISTED | {
        key: page["data"][0][key] for key in ("online", "last_seen", "registered_at")
    }
    assert shape(page) == shape(examples.SENSOR_LIST)
    second = (await service.api.get("/v1/sensors", params={"limit": 1, "cursor": page["next_cursor"]})).json()
    assert serials(second) == [SERIAL + 1]
    assert decode_cursor(examples.SENSOR_LIST["next_cursor"]) == SERIAL + 1  # after the example's last sensor
    bad_key = await service.api.post("/v1/sensors", json={"serial": SERIAL, "labels": {"Region!": "eu"}})
    assert bad_key.json() == examples.LABEL_INVALID
    bad_selector = await service.api.get("/v1/sensors", params={"label": "region"})
    assert bad_selector.json() == examples.SELECTOR_INVALID
