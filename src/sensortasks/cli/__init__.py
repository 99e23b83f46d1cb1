"""The ``sensortasks`` command line, one module per command group."""

from sensortasks.cli.app import app, main

__all__ = ["app", "main"]
