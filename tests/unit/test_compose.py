"""docker-compose.yml is secure by default, and valid for the Compose clients that exist here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def default_services() -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in SERVICES.items() if not spec.get("profiles")}


def test_the_default_broker_runs_the_shipped_secure_config() -> None:
    broker = SERVICES["mosquitto"]
    mounts = broker["volumes"]
    assert "./mosquitto/mosquitto.conf:/shipped/mosquitto/mosquitto.conf:ro" in mounts
    assert "broker-conf" in " ".join(broker["command"])
    for name, spec in default_services().items():
        assert "development.conf" not in yaml.safe_dump(spec), f"{name} uses the anonymous config by default"


def test_the_anonymous_config_only_runs_behind_an_explicit_profile() -> None:
    anonymous = [name for name, spec in SERVICES.items() if "development.conf" in yaml.safe_dump(spec)]
    assert anonymous
    for name in anonymous:
        assert SERVICES[name].get("profiles") == ["development"], name


def test_every_published_port_is_on_loopback_only() -> None:
    published = [(name, port) for name, spec in SERVICES.items() for port in spec.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_secret_is_written_into_the_compose_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text().lower()
    for service in default_services().values():
        for key, value in (service.get("environment") or {}).items():
            assert "password" not in key.lower(), key
            assert "@" not in str(value), f"{key} carries credentials"
    assert "dispatcher-secret" not in text


def test_the_broker_starts_only_after_its_accounts_exist() -> None:
    assert SERVICES["broker-dynsec"]["depends_on"]["broker-init"]["condition"] == "service_completed_successfully"
    assert SERVICES["mosquitto"]["depends_on"]["broker-dynsec"]["condition"] == "service_completed_successfully"
    assert SERVICES["sensortasks"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_the_image_gets_nothing_local() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for pattern in (".venv", ".run", "*.db", "*.db-wal", "*.key", ".env", ".git"):
        assert pattern in ignored, pattern


def compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profile", [None, "postgres", "development"])
def test_the_compose_client_accepts_it(profile: str | None) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Compose client here (neither `docker compose` nor `docker-compose`)")
    args = [*client, "-f", str(ROOT / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
