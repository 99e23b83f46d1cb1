"""Which failure budget a client address spends."""

from __future__ import annotations

import pytest

from sensortasks.api.deps import budget_of


@pytest.mark.parametrize(
    ("address", "budget"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same host, another address
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        ("unknown", "unknown"),
    ],
)
def test_ipv6_clients_share_the_budget_of_their_64(address: str, budget: str) -> None:
    assert budget_of(address) == budget
