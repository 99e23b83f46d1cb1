"""The task list's filters, declared once: the same options on `tasks list` and `tasks export`,
and the query parameters they become."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.testing import CliRunner

from sensortasks.cli.app import app
from sensortasks.cli.tasks import FILTERS, with_filters


def _options(command: str) -> list[str]:
    group = typer.main.get_command(app)
    tasks = group.commands["tasks"]  # type: ignore[attr-defined]
    return [opt for param in tasks.commands[command].params for opt in param.opts]


def test_list_and_export_share_the_filter_options_in_one_order() -> None:
    filters = ["--sensor", "--status", "--type", "--created-since", "--created-until", "--updated-since"]
    filters.append("--updated-until")
    listed, exported = _options("list"), _options("export")
    assert listed[: len(filters)] == filters
    assert exported[exported.index("--sensor") :][: len(filters)] == filters
    assert len(FILTERS) == len(filters)


def test_given_filters_become_query_parameters_and_the_rest_pass_through() -> None:
    seen: list[tuple[dict[str, Any], int]] = []
    probe = typer.Typer()

    @probe.command()
    @with_filters
    def command(filters: dict[str, Any], limit: Annotated[int, typer.Option()] = 5) -> None:
        seen.append((filters, limit))

    result = CliRunner().invoke(probe, ["--sensor", "7", "--type", "update_firmware", "--created-until", "2024-01-02"])
    assert result.exit_code == 0, result.output
    assert seen == [({"sensor_serial": 7, "type": "update_firmware", "created_until": "2024-01-02"}, 5)]
