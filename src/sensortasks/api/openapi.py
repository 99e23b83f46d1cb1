"""The OpenAPI document, and its readers Swagger UI (``/docs``) and ReDoc (``/redoc``) served from
the assets of the `fastapi-offline` wheel, so that both work with no network (air-gapped fleets).

FastAPI's generator passes the document through its own pydantic models and drops every null:
integer bounds come out as floats (2^63-1 as 9.223372036854776e18, which is 2^63) and examples
lose their null fields (and then fail their own schema). `DocumentedAPI.openapi` takes the
schemas of our models from pydantic itself and the examples of `responses.ok`/`responses.error`
as declared, each only where it differs from FastAPI's version by exactly those losses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from sensortasks.api.body import BODIES
from sensortasks.api.responses import DECLARED

log = logging.getLogger(__name__)

ASSETS_URL = "/docs/assets"
#: The wheel that ships Swagger UI and ReDoc, and the folder in it.
ASSETS_PACKAGE = ("fastapi_offline", "static")
REF_TEMPLATE = "#/components/schemas/{model}"
#: The docs pages may load nothing from elsewhere, whatever their scripts try: ReDoc's footer
#: loads its logo from cdn.redoc.ly (drf-spectacular-sidecar issue #11); the browser blocks it.
#: Inline script and styles: the page's Swagger UI settings, ReDoc's styled components.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:"
)
_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})

METADATA: dict[str, Any] = {
    "license_info": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    "servers": [{"url": "/", "description": "The server that serves this document"}],
    "openapi_tags": [
        {"name": "tasks", "description": "Firmware and configuration tasks for sensors."},
        {"name": "sensors", "description": "Sensors: registration, labels, broker credentials, presence."},
        {
            "name": "rollouts",
            "description": "One task to many sensors, paced (cap, rate, windows) and guarded (abort).",
        },
        {
            "name": "mqtt-clients",
            "description": "A customer's broker accounts for its backends, on the MQTT command topics.",
        },
        {"name": "overview", "description": "Your fleet at a glance: tasks by status, sensors online, rates."},
        {"name": "events", "description": "Your tasks' transitions as they happen (server-sent events)."},
        {"name": "operations", "description": "Health and metrics, for probes and scrapers (no API key)."},
    ],
    # The route's function name: `create_task`, not `create_task_v1_tasks_post`.
    "generate_unique_id_function": lambda route: route.name,
    "docs_url": None,
    "redoc_url": None,
}


def _as_fastapi_renders(value: Any, key: str = "") -> Any:  # noqa: ANN401
    """`value` after FastAPI's losses: null members dropped, integer bounds made floats."""
    if isinstance(value, dict):
        return {k: _as_fastapi_renders(v, k) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_as_fastapi_renders(v) for v in value]
    if key in _BOUNDS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _same(lossy: Any, exact: Any) -> bool:  # noqa: ANN401
    # Compared as JSON would be, where 10 and 10.0 are one number but 2^63 and 2^63-1 are not.
    return bool(_as_fastapi_renders(exact) == lossy)


def _models() -> dict[str, list[type[BaseModel]]]:
    found: dict[str, list[type[BaseModel]]] = {}
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for model in stack.pop().__subclasses__():
            stack.append(model)
            if model.__module__.startswith("sensortasks."):
                found.setdefault(model.__name__, []).append(model)
    return found


def _exact_schema(name: str, lossy: dict[str, Any], models: dict[str, list[type[BaseModel]]]) -> dict[str, Any]:
    base, _, suffix = name.partition("-")
    modes: tuple[JsonSchemaMode, ...] = ("serialization", "validation")
    if suffix:
        modes = ("validation",) if suffix == "Input" else ("serialization",)
    for model in models.get(base, []):
        for mode in modes:
            exact = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
            exact.pop("$defs", None)
            if _same(lossy, exact):
                return exact
    if base in models:
        log.warning("openapi: schema %s kept as FastAPI renders it (no model matches it)", name)
    return lossy


def _restore_examples(node: Any, declared: list[Any]) -> None:  # noqa: ANN401
    """Put back, in place, each ``example`` that is a declared one minus its nulls."""
    if isinstance(node, list):
        for item in node:
            _restore_examples(item, declared)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "example":
                exact = [e for e in declared if _same(value, e)]
                if exact and all(e == exact[0] for e in exact):
                    node[key] = jsonable_encoder(exact[0])
            else:
                _restore_examples(value, declared)


def _add_bodies(schemas: dict[str, Any]) -> None:
    """The schemas of the bodies read by `json_body` (FastAPI sees no body parameter there), each
    with those it refers to, in FastAPI's order (by name)."""
    for name, model in BODIES.items():
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
        for inner, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(inner, definition)
        schemas.setdefault(name, schema)
    ordered = sorted(schemas.items())
    schemas.clear()
    schemas.update(ordered)


class DocumentedAPI(FastAPI):
    """FastAPI, with a faithful OpenAPI document and the docs pages served offline."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = get_openapi(
                title=self.title,
                version=self.version,
                openapi_version=self.openapi_version,
                summary=self.summary,
                description=self.description,
                routes=self.routes,
                webhooks=self.webhooks.routes,
                tags=self.openapi_tags,
                servers=self.servers,
                license_info=self.license_info,
                contact=self.contact,
                terms_of_service=self.terms_of_service,
                separate_input_output_schemas=self.separate_input_output_schemas,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            _add_bodies(schemas)
            models = _models()
            for name, lossy in schemas.items():
                schemas[name] = _exact_schema(name, lossy, models)
            _restore_examples(document.get("paths", {}), DECLARED)
            self.openapi_schema = document
        return self.openapi_schema


def install_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` from the packaged assets; no CDN, no Google fonts, no online validator."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    def prefix(request: Request) -> str:
        """The path the app is mounted at behind a proxy ('' when none)."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # Swagger UI would otherwise send the document's URL to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
