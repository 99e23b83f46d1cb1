"""The REST API (FastAPI)."""

from sensortasks.api.app import create_app

__all__ = ["create_app"]
