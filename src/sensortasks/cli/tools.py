"""``sensortasks bench`` and ``sensortasks soak``: the performance and fault-injection runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from sensortasks.cli.common import err


def soak(
    minutes: Annotated[float, typer.Option(min=0.1, help="How long to inject faults.")] = 10.0,
    sensors: Annotated[int, typer.Option(min=1, max=5000)] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule.")] = 1,
    workdir: Annotated[Path | None, typer.Option(help="Keep logs and the database here.")] = None,
) -> None:
    """Mixed faults (SIGKILLed dispatcher and broker, sensor reboots and outages) then an audit table."""
    from sensortasks.tools.soak import soak as run_soak  # noqa: PLC0415

    report = run_soak(minutes=minutes, sensors=sensors, seed=seed, workdir=workdir, say=err.print)
    for line in report.lines():
        print(line)  # noqa: T201
    if report.lost or report.completed_twice:
        raise typer.Exit(1)


def bench(
    tasks: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tasks to run through.")] = 2000,
    sensors: Annotated[int, typer.Option(min=1, max=10_000, help="Simulated sensors.")] = 100,
    mqtt_url: Annotated[str | None, typer.Option("--mqtt-url", help="Use this broker instead of starting one.")] = None,
) -> None:
    """Lifecycles per second and latency, with the raw MQTT baseline of the same run."""
    from sensortasks.mqtt import parse_mqtt_url, probe  # noqa: PLC0415
    from sensortasks.tools.bench import bench as run_bench  # noqa: PLC0415
    from sensortasks.tools.bench import summary  # noqa: PLC0415

    target = parse_mqtt_url(mqtt_url) if mqtt_url else None
    if target is not None:
        asyncio.run(probe(target.host, target.port, username=target.username, password=target.password))
    product, baseline = run_bench(
        tasks=tasks,
        sensors=sensors,
        mqtt_host=target.host if target else None,
        mqtt_port=target.port if target else None,
        say=err.print,
    )
    for line in summary(product, baseline):
        print(line)  # noqa: T201
