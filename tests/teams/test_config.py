"""The `teams` section: defaults per cloud, tenants' FQDNs and numbers, and refusals that name
what is wrong."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from teams_sbc.config import ConfigError, load_config, parse_config
from teams_sbc.teams.config import parse_number_spec

ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "listeners": [
        {
            "name": "teams",
            "transport": "tls",
            "host": "127.0.0.1",
            "port": 5061,
            "tls": {"cert_file": "c.pem", "key_file": "k.pem", "ca_file": "ca.pem"},
        },
        {"name": "carrier", "transport": "udp", "host": "127.0.0.1", "port": 5060},
    ],
    "teams": {
        "fqdn": "SBC.Carrier.Example.",
        "teams_listener": "teams",
        "carrier_listener": "carrier",
        "carrier": {"next_hop": "sip:127.0.0.1:5070"},
    },
}


def with_teams(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw["teams"].update(changes)
    return raw


def test_example_is_valid_and_tenants_get_subdomains() -> None:
    config = load_config(ROOT / "examples" / "sbc-teams.yaml")
    teams = config.teams
    assert teams is not None
    assert [t.fqdn_under(teams.fqdn) for t in teams.tenants] == [
        "contoso.sbc.carrier.example",
        "fab.sbc.carrier.example",
    ]
    assert teams.policy("ringback").early_media_183_to_180 is True
    assert teams.policy("default").refer == "strip"


def test_defaults_follow_the_cloud() -> None:
    teams = parse_config(BASE).teams
    assert teams is not None
    assert teams.fqdn == "sbc.carrier.example"  # lower case, no root dot
    assert [p.name for p in teams.microsoft_proxies()] == [
        "sip.pstnhub.microsoft.com",
        "sip2.pstnhub.microsoft.com",
        "sip3.pstnhub.microsoft.com",
    ]
    assert all(p.port == 5061 and p.address is None for p in teams.microsoft_proxies())
    assert [str(n) for n in teams.source_networks()] == ["52.112.0.0/14", "52.120.0.0/14"]
    assert teams.options_interval == 60.0
    gov = parse_config(with_teams(cloud="gcch")).teams
    assert gov is not None
    assert [p.name for p in gov.microsoft_proxies()] == ["sip.pstnhub.gov.teams.microsoft.us"]
    assert [str(n) for n in gov.source_networks()] == ["52.127.88.0/21"]
    dod = parse_config(with_teams(cloud="dod", allow_sources=[])).teams
    assert dod is not None
    assert [p.name for p in dod.microsoft_proxies()] == ["sip.pstnhub.dod.teams.microsoft.us"]
    assert dod.source_networks() == ()


def test_proxy_addresses_override_only_where_the_name_goes() -> None:
    teams = parse_config(
        with_teams(
            proxies=[
                {"name": "sip.pstnhub.microsoft.com", "address": "127.0.0.1", "port": 15061},
                {"name": "sip2.pstnhub.microsoft.com", "address": "127.0.0.1", "port": 15062},
            ]
        )
    ).teams
    assert teams is not None
    first = teams.microsoft_proxies()[0]
    assert (first.name, first.address, first.port) == (
        "sip.pstnhub.microsoft.com",
        "127.0.0.1",
        15061,
    )


def test_number_specs() -> None:
    assert parse_number_spec("+4930") == ("+4930", "+4930")
    assert parse_number_spec("+4930100-+4930199") == ("+4930100", "+4930199")
    for bad in ("4930", "+4930-+49301", "+4930199-+4930100", "+49x", "+0123"):
        with pytest.raises(ValueError):
            parse_number_spec(bad)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teams_listener": "carrier"}, "must name a tls listener"),
        ({"carrier_listener": "nope"}, "is not a listener"),
        ({"fqdn": "not a name"}, "not a fully qualified domain name"),
        ({"cloud": "china"}, "cloud"),
        ({"allow_sources": ["52.112.0.0/33"]}, "allow_sources"),
        ({"tenants": [{"name": "a", "policy": "gold"}]}, "unknown policy 'gold'"),
        ({"tenants": [{"name": "a", "numbers": ["4930"]}]}, "not an E.164 prefix"),
        ({"tenants": [{"name": "a"}, {"name": "a"}]}, "tenant names must be unique"),
        (
            {"tenants": [{"name": "a", "numbers": ["+49"]}, {"name": "b", "numbers": ["+49"]}]},
            "belongs to tenants 'a' and 'b'",
        ),
        ({"tenants": [{"name": "a", "label": "x", "fqdn": "x.y.z"}]}, "label or fqdn"),
        ({"tenants": [{"name": "Upper"}]}, "tenant name"),
        ({"tenant_header": "X Tenant"}, "not a SIP header name"),
        ({"policies": {"p": {"refer": "drop"}}}, "refer"),
        ({"policies": {"p": {"numbers": {"country_code": "+49"}}}}, "country_code"),
        ({"carrier": {"next_hop": "10.0.0.1"}}, "sip: URI"),
        ({"options_interval": 0}, "options_interval"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_bad_teams_sections_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(with_teams(**changes))


def test_teams_listener_must_verify_its_peer() -> None:
    raw = copy.deepcopy(BASE)
    raw["listeners"][0]["tls"] = {"cert_file": "c", "key_file": "k", "verify_peer": False}
    with pytest.raises(ConfigError, match="verify_peer"):
        parse_config(raw)
