"""``sensors add --label`` and ``simulate``'s label options as users run them."""

from __future__ import annotations

import json

import httpx

from .conftest import ServeProcess
from .test_cli import SERIAL, cli


def test_sensors_add_labels_a_sensor_and_refuses_bad_labels(serve: ServeProcess) -> None:
    serve.env["SENSORTASKS_AUTH"] = "required"
    serve.start()
    key = cli(serve, "keys", "create", "acme").stdout.strip().splitlines()[-1]
    added = cli(serve, "sensors", "add", SERIAL, "--customer", "acme", "--label", "region=eu", "--label", "hw/rev=b2")
    assert json.loads(added.stdout.splitlines()[-1])["labels"] == {"region": "eu", "hw/rev": "b2"}
    refused = cli(serve, "sensors", "add", SERIAL, "--customer", "acme", "--label", "region=eu west", check=False)
    assert refused.returncode == 2
    assert "--label: 'eu west' is not a label value" in refused.stderr
    again = cli(serve, "sensors", "add", SERIAL, "--customer", "acme")  # no --label: the labels stay
    assert json.loads(again.stdout.splitlines()[-1])["labels"] is None
    sensor = httpx.get(f"{serve.url}/v1/sensors/{SERIAL}", headers={"Authorization": f"Bearer {key}"}).json()
    assert sensor["labels"] == {"region": "eu", "hw/rev": "b2"}


def test_simulate_refuses_bad_label_options_before_connecting(serve: ServeProcess) -> None:
    for option, text, why in [
        ("--label-share", "region=eu", "is not KEY=VALUE:SHARE"),
        ("--label-share", "region=eu:1.5", "is not KEY=VALUE:SHARE"),
        ("--fail-label", "Region!=eu:0.3", "--fail-label: 'Region!' is not a label key"),
    ]:
        refused = cli(serve, "simulate", option, text, check=False)
        assert refused.returncode == 2, refused.stderr
        assert why in refused.stderr, refused.stderr
    split = cli(serve, "simulate", "--label-share", "region=eu:0.6", "--label-share", "region=us:0.6", check=False)
    assert split.returncode == 2
    assert "the shares of the values of region must add up to <= 1" in split.stderr
