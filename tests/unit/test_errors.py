"""One exception tree, and one boundary that says which database failures are `Unavailable`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

import sensortasks
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.errors import ConfigError, SensortasksError, Unavailable
from sensortasks.store.engine import DATABASE_UNAVAILABLE, unavailable
from sensortasks.testing import FakeLink, InMemoryStore

#: None: the SDK's `TaskFailed` joins the tree too (sensor/ may import errors.py).
OUTSIDE: set[str] = set()


def _exceptions() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in pkgutil.walk_packages(sensortasks.__path__, "sensortasks."):
        if ".migrations" in module.name or module.name.endswith("__main__"):
            continue  # Alembic's env runs a migration on import; __main__ runs the CLI
        for _, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("sensortasks."):
                found.add(value)
    return found


def test_every_exception_of_the_package_is_a_sensortasks_error() -> None:
    exceptions = _exceptions()
    assert len(exceptions) > 15  # the walk found the package's modules
    outside = {f"{e.__module__}.{e.__qualname__}" for e in exceptions if not issubclass(e, SensortasksError)}
    assert outside == OUTSIDE


def test_database_failures_become_one_unavailable_and_the_rest_are_bugs() -> None:
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    for down in (locked, ConnectionRefusedError(111, "Connection refused")):
        translated = unavailable(down)
        assert isinstance(translated, Unavailable)
        assert (translated.code, translated.message, translated.__cause__) == (
            "unavailable",
            DATABASE_UNAVAILABLE,
            down,
        )
    already = Unavailable("broker admin unreachable")
    assert unavailable(already) is already
    assert unavailable(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))) is None
    assert unavailable(ValueError("a bug")) is None


async def test_the_command_topics_get_one_handler_registered_once() -> None:
    dispatcher = Dispatcher(Settings(), InMemoryStore(), FakeLink())
    assert dispatcher.commands is None

    async def handler(_: object) -> None: ...

    dispatcher.serve_commands(handler)
    assert dispatcher.commands is handler
    with pytest.raises(ConfigError, match="already"):
        dispatcher.serve_commands(handler)
    assert not hasattr(dispatcher, "on_command")
