"""The label rules and their text forms (`sensortasks.labels`), and how the simulator labels its fleet."""

from __future__ import annotations

import pytest

from sensortasks.errors import InvalidInput
from sensortasks.labels import assignments, check_labels, check_patch, merge, parse_assignment, parse_selector, selector
from sensortasks.sensor.simulator import LabelShare, SimulationConfig, read_credentials


def refusal(call: object, *args: object, **kwargs: object) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    details: dict[str, str] = caught.value.details
    assert caught.value.message.startswith(f"{details['field']}: ")
    return details


@pytest.mark.parametrize("key", ["a", "region", "hw/rev", "a.b_c-d", "9", "k" * 63, "A1"])
def test_good_keys(key: str) -> None:
    assert check_labels({key: "v"}) == {key: "v"}


@pytest.mark.parametrize("key", ["", "-a", "a-", "/a", "a/", "a b", "a:b", "é", "k" * 64, "a=b"])
def test_bad_keys_name_the_key(key: str) -> None:
    assert refusal(check_labels, {key: "v"}) == {"field": f"labels.{key}", "rule": "label_key"}


@pytest.mark.parametrize("value", ["", "eu", "eu-west.1_b", "-", "v" * 63])
def test_good_values(value: str) -> None:
    assert check_labels({"k": value}, field="selector.labels") == {"k": value}


@pytest.mark.parametrize("value", ["eu west", "a/b", "a:b", "v" * 64, "é"])
def test_bad_values_name_the_key_and_the_callers_field(value: str) -> None:
    assert refusal(check_labels, {"k": value}, field="selector.labels") == {
        "field": "selector.labels.k",
        "rule": "label_value",
    }


def test_at_most_32_labels() -> None:
    assert len(check_labels({f"k{i}": "" for i in range(32)})) == 32
    assert refusal(check_labels, {f"k{i}": "" for i in range(33)}) == {"field": "labels", "rule": "too_many_labels"}


def test_merge_patch_sets_removes_and_counts_the_result() -> None:
    assert merge({"a": "1", "b": "2"}, {"b": None, "c": "3", "gone": None}) == {"a": "1", "c": "3"}
    assert check_patch({"a": None, "b": "2"}) == {"a": None, "b": "2"}
    assert refusal(check_patch, {"a b": None})["rule"] == "label_key"
    full = {f"k{i}": "" for i in range(32)}
    assert refusal(merge, full, {"one-more": "v"})["rule"] == "too_many_labels"
    assert len(merge(full, {"one-more": "v", "k0": None})) == 32


def test_selector_and_assignment_split_at_the_first_separator() -> None:
    assert parse_selector("region:eu") == ("region", "eu")
    assert parse_selector("ring:") == ("ring", "")
    assert parse_assignment("hw/rev=b2") == ("hw/rev", "b2")
    assert refusal(parse_selector, "region") == {"field": "label", "rule": "label_format"}
    assert refusal(parse_selector, "a:b:c") == {"field": "label", "rule": "label_value"}
    assert refusal(parse_assignment, "region:eu") == {"field": "--label", "rule": "label_format"}
    assert refusal(parse_selector, "Region!:eu") == {"field": "label", "rule": "label_key"}


def test_several_pairs_agree_or_are_refused() -> None:
    assert selector(["region:eu", "ring:canary", "region:eu"]) == {"region": "eu", "ring": "canary"}
    assert selector([]) == {}
    assert refusal(selector, ["region:eu", "region:us"]) == {"field": "label", "rule": "label_conflict"}
    assert assignments(["a=1", "b=2"]) == {"a": "1", "b": "2"}
    assert refusal(selector, [f"k{i}:v" for i in range(33)])["rule"] == "too_many_labels"


def test_the_fleet_is_split_into_labelled_groups_by_serial() -> None:
    shares = [LabelShare("region", "eu", 0.5), LabelShare("region", "us", 0.3), LabelShare("ring", "canary", 0.2)]
    fleet = SimulationConfig(sensors=10, first_serial=100, label_shares=shares)
    labels = fleet.labels()
    assert [s for s, pairs in labels.items() if pairs.get("region") == "eu"] == list(range(100, 105))
    assert [s for s, pairs in labels.items() if pairs.get("region") == "us"] == list(range(105, 108))
    assert [s for s, pairs in labels.items() if pairs.get("ring") == "canary"] == [100, 101]
    assert labels[109] == {}
    with pytest.raises(ValueError, match="shares of the values of region must add up to <= 1"):
        SimulationConfig(sensors=10, label_shares=[LabelShare("region", "eu", 0.6), LabelShare("region", "us", 0.5)])


def test_labelled_sensors_fail_their_share_for_good() -> None:
    fleet = SimulationConfig(
        sensors=4, fatal_rate=0.1, fail_labels=[LabelShare("hw", "b2", 0.3), LabelShare("ring", "canary", 0.8)]
    )
    assert fleet.fatal_rate_of({}) == 0.1
    assert fleet.fatal_rate_of({"hw": "b2"}) == 0.3
    assert fleet.fatal_rate_of({"hw": "b2", "ring": "canary"}) == 0.8
    assert fleet.fatal_rate_of({"hw": "b3"}) == 0.1


def test_credentials_carry_the_labels_sensors_add_printed() -> None:
    line = '{"serial": 7, "mqtt": {"username": "u", "password": "p", "client_id": "u"}, "labels": {"hw": "b2"}}'
    old = '{"serial": 8, "mqtt": {"username": "v", "password": "p", "client_id": "v"}}'
    logins = read_credentials([line, old])
    assert (logins[7].labels, logins[8].labels) == ({"hw": "b2"}, {})
    fleet = SimulationConfig(sensors=0, credentials=logins, label_shares=[LabelShare("ring", "main", 0.5)])
    assert fleet.labels() == {7: {"hw": "b2", "ring": "main"}, 8: {}}


def test_simulate_says_which_serials_carry_each_label() -> None:
    from sensortasks.cli.fleet import labelled_groups

    fleet = SimulationConfig(sensors=5, first_serial=100, label_shares=[LabelShare("region", "eu", 0.4)])
    labels = fleet.labels() | {104: {"region": "eu"}}
    assert labelled_groups(labels) == ["label region=eu: 3 sensor(s), serials 100-101, 104"]
