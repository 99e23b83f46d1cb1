"""A throwaway Mosquitto broker on a free port, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

START_TIMEOUT_S = 10.0


def _worker() -> tuple[int, int]:
    """This pytest-xdist worker's index and the number of workers ((0, 1) outside xdist)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return (int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0), max(1, count)


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a process started next. Two test workers picking at
    once could get the same one before either bound it ("Address already in use" in a CI run),
    so each worker takes only ports of its own (port // 2 % workers == its index: Linux gives
    ``bind`` odd ports and keeps the even ones for outgoing connections, so the parity is not
    ours to split); the ports looked at meanwhile stay bound until the pick, so none comes back
    twice."""
    index, workers = _worker()
    held: list[socket.socket] = []
    try:
        while True:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            if port // 2 % workers == index:
                return port
    finally:
        for sock in held:
            sock.close()


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed: run `apt-get install mosquitto` (./scripts/test does)")
    return found


class MosquittoBroker:
    """A Mosquitto process with a generated configuration, for tests and benchmarks.

    `tcp_nodelay` writes ``set_tcp_nodelay true``: the broker then sends each small packet at
    once instead of holding it for Nagle's algorithm (benchmarks want that); off by default,
    as Mosquitto ships.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        persistence: bool = False,
        extra_config: str = "",
        workdir: Path | None = None,
        tcp_nodelay: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_config = extra_config
        self.tcp_nodelay = tcp_nodelay
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
        if self.tcp_nodelay:
            lines.append("set_tcp_nodelay true")
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
