"""docker-compose.yml is secure by default, and valid for the Compose clients that exist here."""

from __future__ import annotations

import os
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


def scale_instances() -> dict[str, dict[str, Any]]:
    """The sensortasks instances of the `scale` profile (PostgreSQL is in it too)."""
    return {name: spec for name, spec in SERVICES.items() if "scale" in spec.get("profiles", []) and name != "postgres"}


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


def test_the_scale_profile_starts_on_a_healthy_postgres_and_broker() -> None:
    postgres = SERVICES["postgres"]
    assert "scale" in postgres["profiles"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    instances = scale_instances()
    assert instances
    for name, spec in instances.items():
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert spec["depends_on"]["mosquitto"]["condition"] == "service_healthy", name
        assert "sensortasks" not in spec["depends_on"], f"{name} would start the SQLite instance too"


def test_the_scale_instances_share_one_database_and_group_under_distinct_names() -> None:
    instances = scale_instances()
    env = {name: spec["environment"] for name, spec in instances.items()}
    databases = {e["SENSORTASKS_DATABASE_URL"] for e in env.values()}
    assert len(databases) == 1
    assert databases.pop().startswith("postgresql+asyncpg://sensortasks:sensortasks@postgres:5432/")
    groups = {e["SENSORTASKS_MQTT_SHARE_GROUP"] for e in env.values()}
    assert len(groups) == 1
    assert groups.pop()
    names = [e["SENSORTASKS_INSTANCE"] for e in env.values()]
    assert len(set(names)) == len(names), names
    commands = sorted(" ".join(spec["command"]) for spec in instances.values())
    assert commands == ["--api-only", "--dispatcher-only", "--dispatcher-only"]
    for name, spec in instances.items():
        if spec["command"] == ["--dispatcher-only"]:
            assert spec["healthcheck"] == {"disable": True}, f"{name} has no /healthz to answer the image's check"
        else:
            assert spec["ports"] == ["127.0.0.1:8082:8080"]
            assert env[name]["SENSORTASKS_HTTP_HOST"] == "0.0.0.0"  # noqa: S104  (in its container)


def test_the_scale_instances_log_in_to_the_secure_broker_only() -> None:
    for name, spec in scale_instances().items():
        assert spec["entrypoint"] == ["/app/scripts/compose-serve"], name
        assert spec["volumes"] == ["broker-secrets:/secrets:ro"], name
        assert not {"SENSORTASKS_MQTT_URL", "SENSORTASKS_BROKER_ADMIN_URL"} & set(spec["environment"]), name
        assert "mosquitto-dev" not in yaml.safe_dump(spec), name
        published = [str(port) for port in spec.get("ports", [])]
        assert not [port for port in published if port.endswith((":1883", ":8883"))], name


def run_compose_serve(tmp_path: Path, *args: str) -> list[str]:
    """scripts/compose-serve with its secrets in `tmp_path`, and `python` and `sensortasks` that
    print what they were given: what it makes of `args`."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "broker.env").write_text("ADMIN_PASSWORD=admin-pw\nDISPATCHER_PASSWORD=dispatcher-pw\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("python", "sensortasks"):
        fake = bin_dir / program
        fake.write_text(f'#!/bin/sh\necho "{program} $* mqtt=${{SENSORTASKS_MQTT_URL:-}}"\n')
        fake.chmod(0o755)
    script = (ROOT / "scripts" / "compose-serve").read_text().replace("/secrets/", f"{secrets}/")
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SENSORTASKS_INSTANCE": "scale-1"}
    result = subprocess.run(
        ["sh", "-c", script, "compose-serve", *args], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_compose_serve_makes_a_dispatcher_account_per_instance(tmp_path: Path) -> None:
    account, serve = run_compose_serve(tmp_path, "--dispatcher-only")
    assert account.startswith("python -m sensortasks.broker mqtt://admin:admin-pw@mosquitto:1883 scale-1 dispatcher-pw")
    assert serve == "sensortasks serve --dispatcher-only mqtt=mqtt://sensortasks-scale-1:dispatcher-pw@mosquitto:1883"


def test_compose_serve_gives_an_api_only_instance_no_broker_login(tmp_path: Path) -> None:
    assert run_compose_serve(tmp_path, "--api-only") == ["sensortasks serve --api-only mqtt="]


@pytest.mark.parametrize("profile", [None, "postgres", "development", "scale"])
def test_the_compose_client_accepts_it(profile: str | None) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Compose client here (neither `docker compose` nor `docker-compose`)")
    args = [*client, "-f", str(ROOT / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
