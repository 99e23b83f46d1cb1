"""Helpers for tests and users: a throwaway Mosquitto broker on a free port, open or as shipped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from sensortasks.broker_admin import DISPATCHER_USERNAME, DynsecAdmin, MqttCredentials

START_TIMEOUT_S = 10.0
#: The source checkout this module sits in (src layout): where mosquitto/ and scripts/ are.
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed: run `apt-get install mosquitto` (./scripts/test does)")
    return found


class MosquittoBroker:
    """A Mosquitto process with a generated configuration, for tests and benchmarks."""

    def __init__(
        self,
        port: int | None = None,
        *,
        persistence: bool = False,
        extra_config: str = "",
        workdir: Path | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_config = extra_config
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="sensortasks-mosquitto-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, which cannot write here
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")
        return path

    def start(self) -> None:
        config = self._config()
        self.process = subprocess.Popen(  # noqa: S603
            [mosquitto_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
        stderr = self.process.stderr.read().decode() if self.process.stderr and self.process.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {stderr}{tail}")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), saving persistence."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same port with the same data directory."""
        if self.process is not None:
            self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SecureMosquittoBroker(MosquittoBroker):
    """The shipped ``mosquitto/mosquitto.conf`` on free loopback ports: no anonymous access,
    dynamic security, a TLS listener.

    Set up the way an operator sets it up, with the repository's own scripts, so that tests
    prove what ships: ``scripts/dev-certs`` (certificates, in ``certs``; share a directory
    between brokers to make them once), ``scripts/broker-init config`` (the shipped file with
    ports and paths substituted), ``init`` (``mosquitto_ctrl dynsec init`` and the passwords in
    ``workdir/credentials.env``) and, once the broker runs, ``accounts`` (the dispatcher's
    account). Needs a source checkout (``root``) and ``mosquitto_ctrl``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        tls_port: int | None = None,
        workdir: Path | None = None,
        certs: Path | None = None,
        root: Path = REPO_ROOT,
    ) -> None:
        super().__init__(port, workdir=workdir)
        self.tls_port = tls_port or free_port()
        self.certs = certs or self.workdir / "certs"
        self.root = root

    @property
    def tls_url(self) -> str:
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        """The development CA that signed the TLS listener's certificate."""
        return self.certs / "ca.crt"

    @property
    def admin(self) -> MqttCredentials:
        """The dynamic-security admin account."""
        return MqttCredentials("admin", self._credentials()["BROKER_ADMIN_PASSWORD"])

    @property
    def dispatcher(self) -> MqttCredentials:
        """The dispatcher's account (``sensortasks-dispatcher``)."""
        return MqttCredentials(DISPATCHER_USERNAME, self._credentials()["BROKER_DISPATCHER_PASSWORD"])

    def dynsec(self, *, timeout_s: float = 10.0) -> DynsecAdmin:
        """An admin client for this broker (sensor accounts)."""
        admin = self.admin
        return DynsecAdmin(self.host, self.port, admin.username, admin.password, timeout_s=timeout_s)

    def client_tls(self) -> ssl.SSLContext:
        """A TLS context that trusts the development CA, for the TLS listener."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _credentials(self) -> dict[str, str]:
        lines = (self.workdir / "credentials.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))

    def _script(self, *args: str | Path | int) -> str:
        command = [str(self.root / "scripts" / str(args[0])), *map(str, args[1:])]
        env = os.environ | {"PYTHON": sys.executable}
        try:
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env, timeout=60)  # noqa: S603
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{' '.join(command)} failed: {exc.stderr}") from exc
        return done.stdout

    def _config(self) -> Path:
        self._script("dev-certs", self.certs)
        path = self.workdir / "mosquitto.conf"
        path.write_text(self._script("broker-init", "config", self.workdir, self.port, self.tls_port, self.certs))
        self._script("broker-init", "init", self.workdir, self.host, self.port)
        return path

    def start(self) -> None:
        super().start()
        try:
            self._script("broker-init", "accounts", self.workdir)
        except RuntimeError:
            self.stop()
            raise
