"""/openapi.json is complete enough to generate a client from, and /docs and /redoc need no network."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import sensortasks
from sensortasks.api import create_app, examples
from sensortasks.api.errors import HTTP_CODES
from sensortasks.api.models import ErrorCode
from sensortasks.config import Settings
from sensortasks.errors import SensortasksError
from sensortasks.runtime import build_service, build_store

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
#: Every route of /v1 can answer these (no or a bad key, a body over the limit, the auth limiter, a database down).
V1_ERRORS = {"401", "413", "422", "429", "503"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/docs.db", auth="disabled")
    store = build_store(settings)
    app = create_app(build_service(settings, store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client
    await store.db.dispose()


@pytest.fixture
async def spec(api: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await api.get("/openapi.json")).json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["license"] == {"name": "Apache-2.0", "identifier": "Apache-2.0"}
    assert spec["servers"] == [{"url": "/", "description": "The server that serves this document"}]
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids))
    assert {"create_task", "list_tasks", "get_task", "cancel_task", "register_sensor", "healthz"} <= set(ids)


def test_every_operation_tag_is_declared_with_a_description(spec: dict[str, Any]) -> None:
    declared = {tag["name"]: tag.get("description") for tag in spec["tags"]}
    used = {tag for path in spec["paths"].values() for op in path.values() for tag in op.get("tags", [])}
    assert used == set(declared), (used, declared)
    assert all(declared.values()), declared


def test_every_field_and_parameter_has_a_description(spec: dict[str, Any]) -> None:
    missing = [
        f"{name}.{field}"
        for name, schema in spec["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    missing += [
        f"{method.upper()} {path} {parameter['name']}"
        for path, method, operation in operations(spec)
        for parameter in operation.get("parameters", [])
        if not parameter.get("description")
    ]
    missing += [
        f"{name} (model)"
        for name, schema in spec["components"]["schemas"].items()
        if schema.get("type") == "object" and not schema.get("description")
    ]
    assert missing == []


def test_statuses_and_timestamps_are_explained(spec: dict[str, Any]) -> None:
    task = spec["components"]["schemas"]["TaskPublic"]["properties"]
    assert task["status_id"]["enum"] == [1, 2, 3, 4, 5]
    assert "1 Pending, 2 Completed, 3 Error, 4 Ongoing, 5 Cancelled" in task["status_id"]["description"]
    assert task["status_name"]["enum"] == ["Pending", "Completed", "Error", "Ongoing", "Cancelled"]
    for field in ("created_at", "started_at", "completed_at"):
        assert "UTC, in the seed's format `YYYY-MM-DD HH:MM:SS`" in task[field]["description"], field
    for field in ("progress", "started_at", "completed_at", "error"):
        assert "Null" in task[field]["description"], field


def test_integer_bounds_are_integers(spec: dict[str, Any]) -> None:
    floats = [where for where, node in walk(spec) if where.rsplit("/", 1)[-1] in BOUNDS and isinstance(node, float)]
    assert floats == []
    serial = spec["components"]["schemas"]["TaskCreate"]["properties"]["sensor_serial"]
    assert serial["maximum"] == 2**63 - 1
    assert type(serial["maximum"]) is int


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:spec", resource)
    rebased = {"$ref": "urn:spec#" + schema["$ref"][1:]} if "$ref" in schema else schema
    return jsonschema.Draft202012Validator(rebased, registry=registry)


def test_every_example_matches_its_schema(spec: dict[str, Any]) -> None:
    """What Redocly's no-invalid-*-examples rules check, without Node.js."""
    checked = 0
    for name, schema in spec["components"]["schemas"].items():
        for example in schema.get("examples", []):
            _validator(spec, {"$ref": f"#/components/schemas/{name}"}).validate(example)
            checked += 1
    for _, _, operation in operations(spec):
        for response in operation["responses"].values():
            for media in response.get("content", {}).values():
                if "example" in media and "schema" in media:
                    _validator(spec, media["schema"]).validate(media["example"])
                    checked += 1
    assert checked >= 40


def test_responses_have_real_examples(spec: dict[str, Any]) -> None:
    created = spec["paths"]["/v1/tasks"]["post"]["responses"]["201"]["content"]["application/json"]["example"]
    assert created == examples.TASK_PENDING
    assert (created["status_name"], created["attempt_count"], created["started_at"]) == ("Pending", 0, None)
    listed = spec["paths"]["/v1/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
    assert len(listed["data"]) >= 2
    for path, method, operation in operations(spec):
        for status, response in operation["responses"].items():
            assert response.get("description"), (path, method, status)
            if status.startswith("2") and status != "204":
                assert any("example" in media for media in response["content"].values()), (path, method, status)
            if status[0] in "45" and path != "/healthz":
                example = response["content"]["application/json"]["example"]["error"]
                expected = {"unavailable"} if status == "503" else {HTTP_CODES[int(status)]}
                if status == "409":
                    expected.add("not_configured")  # a Conflict that no retry fixes
                assert example["code"] in expected, (path, method, status)


def test_errors_are_documented_where_they_can_occur(spec: dict[str, Any]) -> None:
    for path, method, operation in operations(spec):
        documented = set(operation["responses"])
        if path.startswith("/v1/"):
            assert documented >= V1_ERRORS, (path, method)
            assert operation["security"] == [{"HTTPBearer": []}], (path, method)
        else:
            assert operation["security"] == [], (path, method)
            assert "413" in documented, (path, method)
        if method == "post":
            assert "400" in documented, (path, method)
        if "{" in path:
            assert "404" in documented, (path, method)
    assert "409" in spec["paths"]["/v1/tasks/{task_id}"]["delete"]["responses"]
    assert "429" in spec["paths"]["/v1/tasks"]["get"]["responses"]
    assert "Retry-After" in spec["paths"]["/v1/tasks"]["get"]["responses"]["429"]["headers"]
    health = spec["paths"]["/healthz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert health["schema"] == {"$ref": "#/components/schemas/HealthPublic"}
    assert health["example"] == {"status": "unavailable", "database": "up", "broker": "down"}


def _error_codes() -> set[str]:
    """Every code the package can put in an error: the HTTP layer's and the error tree's."""
    for module in pkgutil.walk_packages(sensortasks.__path__, "sensortasks."):
        if ".migrations" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    tree: set[str] = set()
    stack: list[type[SensortasksError]] = [SensortasksError]
    while stack:
        kind = stack.pop()
        tree.add(kind.code)
        stack.extend(kind.__subclasses__())
    return tree | set(HTTP_CODES.values()) | {"internal_error"}


def test_error_codes_are_an_enum_with_their_meaning(spec: dict[str, Any]) -> None:
    assert _error_codes() <= {code.value for code in ErrorCode}
    documented = spec["components"]["schemas"]["ErrorCode"]
    assert documented["enum"] == [code.value for code in ErrorCode]
    for code in ErrorCode:
        assert f"- `{code.value}`" in documented["description"], code
    assert spec["components"]["schemas"]["ErrorBody"]["properties"]["code"]["$ref"] == "#/components/schemas/ErrorCode"


async def test_invalid_json_names_the_body_and_the_position(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/tasks", content=b'{"sensor_serial": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"] == [
        {"field": "body", "rule": "json_invalid", "message": "invalid JSON: Expecting value at character 18"}
    ]
    assert error["message"] == "body: invalid JSON: Expecting value at character 18"


REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)|\burl:\s*["']([^"']+)""")
EXTERNAL = re.compile(r"""(?:https?:)?//[\w.-]+\.\w""")


def references(text: str) -> list[str]:
    return [next(g for g in match.groups() if g) for match in REFERENCE.finditer(text)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_need_no_network(api: httpx.AsyncClient, page: str) -> None:
    """The page and everything it references come from this app: no CDN, no fonts, no validator."""
    response = await api.get(page)
    html = response.text
    assert EXTERNAL.findall(html) == []
    # and the browser may not fetch from anywhere else, whatever a script tries (ReDoc's logo)
    assert response.headers["content-security-policy"].startswith("default-src 'self';")
    queue = [urljoin(page, ref) for ref in references(html)]
    assert "/openapi.json" in queue
    assert any(url.endswith(".js") for url in queue)
    fetched: set[str] = set()
    while queue:
        url = queue.pop()
        if url in fetched or url.startswith("data:"):
            continue
        fetched.add(url)
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", ""), f"{page} references {url}"
        response = await api.get(url)
        assert response.status_code == 200, url
        assert response.content, url
        if response.headers["content-type"].startswith("text/css"):
            queue += [urljoin(url, ref) for ref in references(response.text)]
    assert len(fetched) >= 3  # the document, the script, the favicon (and Swagger UI's stylesheet)
