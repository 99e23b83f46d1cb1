"""The exceptions of sensortasks, under one root.

    SensortasksError
    ├── ConfigError             invalid settings
    │   └── BrokerRefused       (mqtt) the broker refuses our login: configuration must fix it
    ├── NotFound                no such task or sensor (or not the caller's)
    ├── Conflict                the request contradicts the task's state (e.g. cancel a Completed task)
    │   └── NotConfigured       the deployment lacks what the request needs (e.g. a broker admin)
    ├── InvalidInput            a request that fails validation
    ├── Unavailable             a dependency is down: retry later (503 / ``unavailable``)
    │   │                       (a database failure becomes one at store.engine.unavailable)
    │   └── BrokerAdminError    (broker.dynsec) dynamic security refused or did not answer
    │       └── BrokerUnreachable
    ├── StaleBatch              (store) a guarded batch lost a race; the dispatcher retries it
    ├── ApiError                (api.errors) refused by the HTTP layer: 401, 429...
    ├── _TooLarge               (api.limits) a body over the limit: 413
    ├── CommandRefused          (commands.mqtt) a command refused before it ran, answered
    │   ├── Unauthorized
    │   ├── UnknownCommand
    │   ├── TooManyRequests
    │   └── PayloadTooLarge
    ├── Unanswered              (commands.mqtt) a command refused with nowhere to answer
    └── TaskFailed              (sensor.job) raised by a device handler to report an error

The API maps these to HTTP in one exception handler; the MQTT command topics map them
to ``{"ok": false, "error": {"code", "message"}}``.
"""

from __future__ import annotations

from typing import Any


class SensortasksError(Exception):
    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:  # noqa: ANN401
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(SensortasksError):
    code = "invalid_configuration"


class NotFound(SensortasksError):
    code = "not_found"


class Conflict(SensortasksError):
    code = "conflict"


class NotConfigured(Conflict):
    """Permanent until the operator configures it: retrying does not help (so not a 503)."""

    code = "not_configured"


class InvalidInput(SensortasksError):
    code = "invalid_input"


class Unavailable(SensortasksError):
    code = "unavailable"
