"""Mosquitto running the shipped `mosquitto/mosquitto.conf` (ports and paths substituted)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sensortasks.broker_admin import DynsecAdmin
from sensortasks.testing import MosquittoBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin", "admin-secret")
DISPATCHER = ("sensortasks-dispatcher", "dispatcher-secret")


class SecureBroker(MosquittoBroker):
    """The shipped secure configuration, on free ports, with a fresh dynamic-security file."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir=workdir)
        self.tls_port = free_port()
        self.certs = workdir / "certs"

    def _config(self) -> Path:
        render = [str(ROOT / "scripts" / "broker-conf"), str(self.workdir), str(self.certs)]
        ports = [str(self.port), self.host, str(self.tls_port), self.host]
        text = subprocess.run([*render, *ports], check=True, capture_output=True, text=True).stdout
        text += f"log_dest file {self.log_path}\n"
        dynsec = self.workdir / "dynamic-security.json"
        if not dynsec.exists():
            subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(dynsec), *ADMIN], check=True, capture_output=True)
            subprocess.run([str(ROOT / "scripts" / "dev-certs"), str(self.certs)], check=True, capture_output=True)
        path = self.workdir / "mosquitto.conf"
        path.write_text(text)
        return path

    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

    def admin(self) -> DynsecAdmin:
        return DynsecAdmin(self.host, self.port, *ADMIN)


@pytest.fixture
async def secure_broker(tmp_path: Path) -> AsyncIterator[SecureBroker]:
    broker = SecureBroker(tmp_path / "secure-broker")
    broker.start()
    await broker.admin().add_dispatcher(*DISPATCHER)
    yield broker
    broker.close()
