"""The ``sensortasks`` command line: the root app, each command group from its own module.
Flags override the environment (``SENSORTASKS_*``)."""

from __future__ import annotations

import os

import typer

from sensortasks.cli import fleet, serve, tools
from sensortasks.cli.accounts import mqtt_clients_app
from sensortasks.cli.common import Commands
from sensortasks.cli.keys import keys_app
from sensortasks.cli.rollouts import rollouts_app
from sensortasks.cli.sensors import sensors_app
from sensortasks.cli.tasks import tasks_app

app = typer.Typer(
    cls=Commands, help="MQTT task dispatcher for sensor fleets.", no_args_is_help=True, add_completion=False
)
# In the order `sensortasks --help` lists them: the commands, then the groups.
app.command()(serve.serve)
app.command()(fleet.simulate)
app.command()(fleet.watch)
app.command()(tools.soak)
app.command()(tools.bench)
app.add_typer(serve.db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(tasks_app, name="tasks")
app.add_typer(rollouts_app, name="rollouts")
app.add_typer(sensors_app, name="sensors")
app.add_typer(mqtt_clients_app, name="mqtt-clients")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
