"""The shared MQTT helper: the clients it builds, its back-off, and the tools' percentile."""

from __future__ import annotations

import math
import ssl

import aiomqtt
import pytest

from sensortasks.mqtt import Backoff, MqttTarget, new_client, parse_mqtt_url, unique_identifier
from sensortasks.tools.stats import percentile

PLAIN = MqttTarget("broker.example", 1883, "u", "p", tls=False)


async def test_a_persistent_session_keeps_the_session_and_asks_for_an_expiry() -> None:
    will = aiomqtt.Will("ops/dispatchers/a", b"{}", qos=1, retain=True)
    client = new_client(
        PLAIN, identifier="sensortasks-a", session_expiry_s=60, will=will, timeout=3.0, max_outgoing_calls=7
    )
    assert client._clean_start is False
    assert client._properties is not None
    assert client._properties.SessionExpiryInterval == 60
    assert client._client._client_id == b"sensortasks-a"
    assert client._client._will_topic == b"ops/dispatchers/a"
    assert client._client._protocol == aiomqtt.ProtocolVersion.V5
    assert client.timeout == 3.0
    assert client.pending_calls_threshold == 7


async def test_a_plain_client_has_a_session_that_ends_with_it_and_no_tls() -> None:
    client = new_client(PLAIN, identifier=None, max_inflight=100)
    assert client._clean_start is not False
    assert client._properties is None
    assert client._client._ssl_context is None
    assert client._client._max_inflight_messages == 100


async def test_tls_follows_the_url_with_the_callers_context_or_the_system_one() -> None:
    mine = ssl.create_default_context()
    assert new_client(parse_mqtt_url("mqtts://h"), identifier="x", ssl_context=mine)._client._ssl_context is mine
    assert isinstance(new_client(parse_mqtt_url("mqtts://h"), identifier="x")._client._ssl_context, ssl.SSLContext)
    assert new_client(parse_mqtt_url("mqtt://h"), identifier="x", ssl_context=mine)._client._ssl_context is None


def test_unique_identifiers_differ_and_carry_their_prefix() -> None:
    a, b = unique_identifier("sensortasks-watch"), unique_identifier("sensortasks-watch", 12)
    assert a.startswith("sensortasks-watch-")
    assert len(a) == len("sensortasks-watch-") + 8
    assert len(b) == len("sensortasks-watch-") + 12
    assert a[:26] != b[:26]


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    caps = [0.5, 1.0, 2.0, 4.0, 4.0]
    for cap in caps:
        assert cap / 2 <= backoff.next() <= cap
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


@pytest.mark.parametrize(
    ("samples", "p", "expected"),
    [([3.0, 1.0, 2.0], 50, 2.0), ([1.0, 2.0], 50, 2.0), (list(range(1, 101)), 99, 100), ([5.0], 99, 5.0)],
)
def test_percentile_is_the_sample_at_the_nearest_rank_below(samples: list[float], p: float, expected: float) -> None:
    assert percentile(samples, p) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))
