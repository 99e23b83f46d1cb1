"""Command-line tools from npm for the tests, installed once into the repository's ``.cache/npm``
(gitignored) and reused; a test skips, saying why, where Node.js or the registry is missing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "npm"
INSTALL_TIMEOUT_S = 600


def npm_tool(package: str, version: str, command: str) -> Path:
    """The path of `command` from `package`@`version`, installing it on first use."""
    for needed in ("node", "npm"):
        if shutil.which(needed) is None:
            pytest.skip(f"{needed} is not installed: cannot run {package}")
    prefix = CACHE / f"{package.replace('/', '+')}@{version}"
    binary = prefix / "node_modules" / ".bin" / command
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time, whatever runs the tests
        if not binary.exists():
            try:
                subprocess.run(
                    ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                     "--loglevel=error", f"{package}@{version}"],
                    capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=True,
                    env=os.environ | {"npm_config_update_notifier": "false"},
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pytest.skip(f"npm install {package}@{version} did not finish in {INSTALL_TIMEOUT_S} s")
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"npm install {package}@{version} failed: {exc.stderr.strip()[-500:]}")
    return binary
