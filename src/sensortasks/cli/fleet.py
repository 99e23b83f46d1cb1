"""``sensortasks simulate`` and ``sensortasks watch``: a simulated fleet on the broker, and the
live view of ``ops/#``."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sensortasks.cli.common import (
    LogFormat,
    LogLevel,
    MqttUrl,
    console,
    err,
    fail,
    mqtt_connection,
    say,
    settings,
    setup_logging,
)

if TYPE_CHECKING:
    from sensortasks.ops.watch import WatchState
    from sensortasks.sensor.simulator import FleetStats, LabelShare


def simulate(
    sensors: Annotated[int, typer.Option(min=1, max=100_000, help="How many sensors.")] = 10,
    first_serial: Annotated[int, typer.Option(min=1)] = 100_000_000_000_000,
    work_s: Annotated[float, typer.Option(min=0, help="Mean work time per task.")] = 0.5,
    error_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of runs failing (retryable).")] = 0.0,
    fatal_rate: Annotated[float, typer.Option(min=0, max=1, help="Share failing for good.")] = 0.0,
    silent_share: Annotated[float, typer.Option(min=0, max=1, help="Share of sensors that never answer.")] = 0.0,
    seconds: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            help="JSON lines as `sensors add` prints them: exactly these sensors, each its own account and labels."
        ),
    ] = None,
    label_share: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE:SHARE labels that share of the fleet, by serial: per key the values follow each other "
            "from the first serial (region=eu:0.5 region=us:0.5); the start-up lines say which serials, to "
            "register them with `sensors add --label`. Repeat it.",
        ),
    ] = None,
    fail_label: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE:SHARE: sensors carrying that label fail that share of their runs for good "
            "(a demo rollout that aborts). Repeat it.",
        ),
    ] = None,
    mqtt_url: MqttUrl = None,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
) -> None:
    """Run a fleet of simulated sensors (the sensor SDK) against the broker."""
    import aiomqtt  # noqa: PLC0415

    from sensortasks.errors import Unavailable  # noqa: PLC0415
    from sensortasks.mqtt import probe, reason, refusal, refused  # noqa: PLC0415
    from sensortasks.sensor.simulator import SimulationConfig, run_fleet  # noqa: PLC0415

    setup_logging(log_level, log_format)
    label_shares = _label_shares(label_share, "--label-share")
    fail_labels = _label_shares(fail_label, "--fail-label")
    config = settings(mqtt_url=mqtt_url)
    logins = _credentials(credentials) if credentials else {}
    if logins:
        sensors, first_serial = len(logins), min(logins)
    broker = mqtt_connection(config)
    host, port, username = broker["host"], broker["port"], broker["username"]
    try:
        fleet = SimulationConfig(
            sensors=sensors,
            first_serial=first_serial,
            work_s=work_s,
            error_rate=error_rate,
            fatal_rate=fatal_rate,
            silent_share=silent_share,
            seed=seed,
            credentials=logins,
            label_shares=label_shares,
            fail_labels=fail_labels,
            **broker,
        )
    except ValueError as exc:  # what the options cannot say alone (the shares of a key add up to > 1)
        fail(f"invalid simulation: {exc}", 2)

    async def run() -> FleetStats:
        # One connection first: a dead broker or a refused login is one line, not N sensors' warnings.
        # Not with a sensor's own account: it is bound to that sensor's client id, and a probe under
        # it would take over the sensor's session; the sensors then say it themselves, at once.
        if username is None and not logins:
            await probe(host, port, tls_context=broker["tls_context"])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)

        def started(stats: FleetStats) -> None:
            # The fleet's clients, sockets and buffers live as long as the run: no collection
            # scans them again. At 5,000 sensors collections were 41 % of this process's CPU
            # (paho allocates a Condition per publish, each allocation counting towards one).
            gc.freeze()
            for line in labelled_groups(fleet.labels()):
                say(line)
            say(f"simulating {stats.connected} sensor(s) from serial {first_serial}; Ctrl-C to stop")

        try:
            return await run_fleet(fleet, stop=stop, on_started=started)
        except (aiomqtt.MqttError, TimeoutError) as exc:  # not one sensor could connect (run_fleet says why)
            if (why := refusal(exc)) is not None:
                raise refused(host, port, username, why) from None
            raise Unavailable(f"cannot reach the MQTT broker {host}:{port}: {reason(exc)}") from None

    stats = asyncio.run(run())
    print(fleet_summary(stats))  # noqa: T201


def fleet_summary(stats: FleetStats) -> str:
    silent = f" ({stats.silent} silent)" if stats.silent else ""
    return (
        f"{stats.connected} of {stats.sensors} sensor(s) connected{silent}; "
        f"{stats.received} task message(s) received, {stats.started} run(s) started: "
        f"{stats.completed} completed, {stats.errors} failed and retryable, {stats.fatal_errors} failed for good, "
        f"{stats.cancelled} interrupted"
    )


def _label_shares(texts: list[str] | None, option: str) -> list[LabelShare]:
    """``KEY=VALUE:SHARE`` options (a value has no ``:``, so the last one splits); a bad one exits 2."""
    from sensortasks.errors import InvalidInput  # noqa: PLC0415
    from sensortasks.labels import parse_assignment  # noqa: PLC0415
    from sensortasks.sensor.simulator import LabelShare  # noqa: PLC0415

    shares = []
    for text in texts or ():
        label, found, share = text.rpartition(":")
        try:
            if not found:
                raise ValueError(text)
            key, value = parse_assignment(label, field=option)
            shares.append(LabelShare(key, value, float(share)))
            if not 0.0 <= shares[-1].share <= 1.0:
                raise ValueError(share)
        except InvalidInput as exc:
            fail(f"{exc.message} (as KEY=VALUE:SHARE)", 2)
        except ValueError:
            fail(f"{option}: {text!r} is not KEY=VALUE:SHARE (SHARE a number within 0..1)", 2)
    return shares


def labelled_groups(labels: dict[int, dict[str, str]]) -> list[str]:
    """One line per label of the fleet: how many sensors carry it, and their serials (ranges)."""
    serials: dict[tuple[str, str], list[int]] = {}
    for serial, pairs in sorted(labels.items()):
        for pair in sorted(pairs.items()):
            serials.setdefault(pair, []).append(serial)
    return [
        f"label {key}={value}: {len(found)} sensor(s), serials {_ranges(found)}"
        for (key, value), found in serials.items()
    ]


def _ranges(serials: list[int]) -> str:
    runs: list[list[int]] = []
    for serial in serials:
        if runs and runs[-1][1] + 1 == serial:
            runs[-1][1] = serial
        else:
            runs.append([serial, serial])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _credentials(path: Path) -> dict[int, Any]:
    from sensortasks.sensor.simulator import read_credentials  # noqa: PLC0415

    try:
        with path.open() as lines:
            return read_credentials(lines)
    except (OSError, ValueError) as exc:
        err.print(f"[red]--credentials {path}:[/red] {exc}")
        raise typer.Exit(2) from None


def watch(
    seconds: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    mqtt_url: MqttUrl = None,
) -> None:
    """Live view of ops/#: connection state, tasks by status, transitions, rejections, dispatchers.

    Exits 1 with one line when the broker refuses the login, or when it is not connected at the end."""
    from sensortasks.ops.watch import watch as run_watch  # noqa: PLC0415

    config = settings(mqtt_url=mqtt_url)
    broker = mqtt_connection(config)

    async def run() -> WatchState:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        return await run_watch(topics=config.topics, seconds=seconds, console=console, stop=stop, **broker)

    state = asyncio.run(run())
    if not state.link.connected:
        fail(f"not connected: {state.link.describe()}")
