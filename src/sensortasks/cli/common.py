"""What every ``sensortasks`` command shares: consoles, common options, settings, and the one
place where an expected failure (a dead server, database or broker, a refused login, a
configuration error) becomes one clear line on stderr and exit status 1 instead of a traceback.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypedDict, TypeVar

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer._click import Context
from typer.core import TyperGroup

from sensortasks.config import Settings, get_settings
from sensortasks.errors import SensortasksError
from sensortasks.ops import logs

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")

#: Piped output is not cut to 80 columns (scripts should still prefer --json).
console = Console(width=None if sys.stdout.isatty() else 250)
#: Soft-wrapped: a message stays one line however narrow the terminal (or a pipe: 80 columns).
err = Console(stderr=True, soft_wrap=True)

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]
LogFormat = Annotated[
    logs.LogFormat,
    typer.Option("--log-format", envvar="SENSORTASKS_LOG_FORMAT", help="text, or json: one object per line."),
]
MqttUrl = Annotated[str | None, typer.Option("--mqtt-url", help="Overrides SENSORTASKS_MQTT_URL.")]
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="Overrides SENSORTASKS_DATABASE_URL.")]
#: A plain flag (typer would render a bool option as ``--json <bool>``).
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.", metavar="")]
ApiUrl = Annotated[str | None, typer.Option("--url", help="Server URL (default from SENSORTASKS_HTTP_*).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="SENSORTASKS_API_KEY", help="API key.")]


log = logging.getLogger("sensortasks.cli")
#: Set by `setup_logging`: with JSON logs, stderr carries only JSON lines (for log shippers).
_json_stderr = False


def say(message: str) -> None:
    """A line for the person at the terminal (a log record when stderr is JSON)."""
    if _json_stderr:
        log.info(message)
    else:
        err.print(escape(message), highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    if _json_stderr:
        log.error(message)
    else:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def settings(**overrides: Any) -> Settings:  # noqa: ANN401
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given) if given else get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        fail(f"invalid configuration: {problems}", 2)


def run_or_exit(work: Coroutine[Any, Any, T], to: Console = err) -> T:
    """Run a coroutine; a sensortasks error is one red line (code: message) on `to`, exit status 1."""
    try:
        return asyncio.run(work)
    except SensortasksError as exc:
        to.print(f"[red]{exc.code}:[/red] {exc.message}")
        raise typer.Exit(1) from None


# -- the REST API's clients (tasks, rollouts) ---------------------------------------
def api_client(url: str | None, api_key: str | None) -> httpx.Client:
    """A client of the REST API at `url` (default: the configured HTTP address), with the key."""
    if url is None:
        settings = get_settings()
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host  # noqa: S104
        url = f"http://{host}:{settings.http_port}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30.0)


def fail_response(response: httpx.Response) -> NoReturn:
    """The API's error (``status code: message``) as one line, then exit 1."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        fail(f"{response.status_code} {response.reason_phrase}: {response.text[:200]}")
    message = f"{response.status_code} {error.get('code', '')}: {error.get('message', '')}"
    if response.status_code == 401:  # noqa: PLR2004
        message += " (give a key with --api-key or SENSORTASKS_API_KEY)"
    fail(message)


def api_call(url: str | None, api_key: str | None, method: str, path: str, **kwargs: Any) -> Any:  # noqa: ANN401
    """One request; its JSON answer, or `fail_response`."""
    with api_client(url, api_key) as client:
        response = client.request(method, path, **kwargs)
    if response.is_error:
        fail_response(response)
    return response.json()


def cell(value: Any) -> Text:  # noqa: ANN401
    """A table cell: text, never markup (errors and names come from sensors and customers)."""
    return Text("" if value is None else str(value))


def show_record(
    record: dict[str, Any], title: str, rows: Iterable[tuple[str, Any, str | None]], *, as_json: bool
) -> None:
    """One resource: its JSON, or a table of `rows` (field, value, style), one field a row."""
    if as_json:
        print(json.dumps(record, indent=2))  # noqa: T201
        return
    table = Table("field", "value", title=title, title_justify="left")
    for name, value, style in rows:
        table.add_row(name, cell(value), style=style)
    console.print(table)


class MqttConnection(TypedDict):
    """How a command connects to the broker: the keyword arguments of `probe`, `watch` and the
    simulator alike."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls_context: ssl.SSLContext | None


def mqtt_connection(config: Settings) -> MqttConnection:
    """The broker of the settings: its target, credentials and TLS (with the configured CA)."""
    from sensortasks.mqtt import tls_context  # noqa: PLC0415

    target = config.mqtt
    return MqttConnection(
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        tls_context=tls_context(config.mqtt_ca_file) if target.tls else None,
    )


def explain(exc: BaseException) -> str | None:
    """The one line to show for an expected failure, or None for a bug."""
    import aiomqtt  # noqa: PLC0415  (only when something failed: they take a while to import)
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError  # noqa: PLC0415

    if isinstance(exc, BaseExceptionGroup):
        lines = [explain(inner) for inner in exc.exceptions]
        return lines[0] if lines and all(lines) else None
    if isinstance(exc, SensortasksError):
        return exc.message
    if isinstance(exc, httpx.HTTPError):
        where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}" if _has_request(exc) else ""
        if isinstance(exc, httpx.TimeoutException):
            return f"the server{where} did not answer in time ({type(exc).__name__})"
        return f"cannot reach the server{where}: {exc}"
    if isinstance(exc, aiomqtt.MqttError):
        return f"MQTT broker: {exc}"
    if isinstance(exc, SQLAlchemyError):
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        return f"database error: {orig or str(exc).splitlines()[0]}"
    if isinstance(exc, OSError):
        return str(exc)
    return None


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018  (raises RuntimeError when the error has none)
    except RuntimeError:
        return False
    return True


class Commands(TyperGroup):
    """The root command group: expected failures of any subcommand end as `fail` lines."""

    def invoke(self, ctx: Context) -> Any:  # noqa: ANN401
        try:
            return super().invoke(ctx)
        except Exception as exc:
            line = explain(exc)
            if line is None:
                raise
            fail(line)


def setup_logging(level: str, fmt: logs.LogFormat = "text") -> None:
    global _json_stderr  # noqa: PLW0603  (one process, one logging set-up)
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail(f"--log-level: {level!r} is not one of debug, info, warning, error", 2)
    logs.configure(level, fmt)
    _json_stderr = fmt == "json"
