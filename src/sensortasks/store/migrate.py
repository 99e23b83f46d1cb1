"""Alembic, driven from code: ``sensortasks db upgrade`` and ``serve`` on start."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    command.upgrade(alembic_config(url), "head")
