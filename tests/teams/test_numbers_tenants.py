"""Numbers to E.164 by country rules, and tenant selection: by FQDN from Teams, by header or
longest number match from the carrier."""

from __future__ import annotations

import pytest

from teams_sbc.teams.config import NumberRules
from teams_sbc.teams.numbers import to_e164
from teams_sbc.teams.tenants import NoTenant, Tenants
from tests.teams.bench import CONTOSO, FAB, FQDN, config

DE = NumberRules(country_code="49")
NANP = NumberRules(country_code="1", national_prefix="1", international_prefix="011")


@pytest.mark.parametrize(
    ("user", "rules", "expected"),
    [
        ("+4930123456", DE, "+4930123456"),
        ("004930123456", DE, "+4930123456"),
        ("030123456", DE, "+4930123456"),
        ("030-123%20456", DE, "+4930123456"),  # visual separators and escapes
        ("4930123456", DE, "+4930123456"),  # E.164 without its "+", as trunks send it
        ("030123456", NumberRules(), None),  # national, but no country code to place it
        ("12125550100", NANP, "+12125550100"),
        ("011442071234567", NANP, "+442071234567"),
        ("alice", DE, None),
        ("+0123", DE, None),
        ("+1234567890123456", DE, None),  # 16 digits: longer than E.164 allows
    ],
)
def test_to_e164(user: str, rules: NumberRules, expected: str | None) -> None:
    assert to_e164(user, rules) == expected


@pytest.fixture
def tenants() -> Tenants:
    teams = config().teams
    assert teams is not None
    return Tenants(teams)


def test_from_teams_by_request_uri_host_then_to_host(tenants: Tenants) -> None:
    found = tenants.from_teams(CONTOSO, FAB)
    assert not isinstance(found, NoTenant) and found.name == "contoso"
    found = tenants.from_teams("10.0.0.1", FAB.upper())
    assert not isinstance(found, NoTenant) and found.name == "fabrikam"
    found = tenants.from_teams(FQDN, None)
    assert not isinstance(found, NoTenant) and found.name is None and found.label == "base"
    missing = tenants.from_teams("other.example", "x.example")
    assert missing == NoTenant(404, "Not Found (no trunk other.example here)")


def test_from_carrier_longest_match_wins(tenants: Tenants) -> None:
    # contoso has +4930123 (prefix) and +4930123400-+4930123499 (range); fabrikam +4940555.
    assert tenants.by_number("+4930123450").name == "contoso"  # type: ignore[union-attr]
    assert tenants.by_number("+49301235").name == "contoso"  # type: ignore[union-attr]
    assert tenants.by_number("+4940555123").name == "fabrikam"  # type: ignore[union-attr]
    assert tenants.by_number("+4989000") is None
    assert tenants.from_carrier("+4989000", None) == NoTenant(404, "No tenant for +4989000")
    assert tenants.from_carrier(None, None) == NoTenant(404, "Called number not in E.164")


def test_range_beats_a_shorter_prefix_of_another_tenant() -> None:
    teams = config(
        tenants=[
            {"name": "wide", "numbers": ["+4930"]},
            {"name": "narrow", "numbers": ["+4930100-+4930199"]},
        ]
    ).teams
    assert teams is not None
    tenants = Tenants(teams)
    assert tenants.by_number("+4930150").name == "narrow"  # type: ignore[union-attr]
    assert tenants.by_number("+49301500").name == "wide"  # other length: not in the range
    assert tenants.by_number("+4930200").name == "wide"  # type: ignore[union-attr]


def test_from_carrier_by_header_first(tenants: Tenants) -> None:
    found = tenants.from_carrier("+4930123450", "fabrikam")
    assert not isinstance(found, NoTenant) and found.name == "fabrikam"
    found = tenants.from_carrier(None, FAB)
    assert not isinstance(found, NoTenant) and found.name == "fabrikam"
    assert tenants.from_carrier("+4930123450", "nobody") == NoTenant(404, "Unknown tenant 'nobody'")


def test_single_tenant_trunk_takes_every_number() -> None:
    teams = config(tenants=[], unknown_tenant_status=403).teams
    assert teams is not None
    tenants = Tenants(teams)
    assert tenants.from_carrier("+4989000", None) is tenants.base
    assert tenants.from_carrier(None, "x") == NoTenant(403, "Unknown tenant 'x'")
