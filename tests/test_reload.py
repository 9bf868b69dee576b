"""Config reload without a restart, with the real ``teams-sbc run``: a tenant added to the file
takes calls to its numbers (sipp as the carrier, a scripted Microsoft proxy over mutual TLS), a
broken file is refused and the old config keeps working, a listener change waits for a restart,
and SIGHUP checks at once. The process is the same one throughout (same pid)."""

from __future__ import annotations

import json
import signal
from typing import Any

import yaml

from tests.teams import test_edge_e2e
from tests.teams.test_edge_e2e import FQDN, Bed, BedFactory, _call
from tests.test_workers import SCENARIOS, callers, per_worker, read_trace
from tests.testbed.process import wait_until
from tests.testbed.sbc import SbcFactory, SbcProcess
from tests.testbed.sipp import SippFactory

NEW_NUMBER = "+4950777123"

#: The Teams edge tests' fixture: a BedFactory, its peers closed after the test.
beds = test_edge_e2e.beds


def _rewrite(sbc: SbcProcess, change: Any) -> None:
    """Edit the running SBC's file the way the kubelet updates a ConfigMap volume: a new file
    swapped in at once (never a half-written one)."""
    config = yaml.safe_load(sbc.config_path.read_text())
    change(config)
    staging = sbc.config_path.with_suffix(".new")
    staging.write_text(yaml.safe_dump(config, sort_keys=False))
    staging.replace(sbc.config_path)


def _config_status(sbc: SbcProcess) -> dict[str, Any]:
    code, body = sbc.http("/config")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def _reloads(sbc: SbcProcess, result: str) -> float:
    return sbc.metrics().value("sbc_config_reload_total", result=result)


def _fast_bed(beds: BedFactory) -> Bed:
    bed = beds(uas_scenario=None)
    assert bed.sbc.proc is not None
    wait_until(lambda: bed.proxy_state(0)["state"] == "up", 10, "sip up")
    return bed


def test_a_tenant_added_to_the_file_takes_calls_without_a_restart(
    beds: BedFactory, sipp_factory: SippFactory
) -> None:
    bed = _fast_bed(beds)
    sbc = bed.sbc
    assert sbc.proc is not None
    pid = sbc.proc.pid
    scrape = sbc.metrics()
    assert scrape.value("sbc_config_generation") == 1
    # Not a tenant's number yet: refused at the SBC, Microsoft sees nothing.
    assert _call(bed, sipp_factory, NEW_NUMBER) == 0
    assert not bed.peers["sip"].dialogs and not bed.peers["sip2"].dialogs

    def add_tenant(config: dict[str, Any]) -> None:
        config["teams"]["tenants"].append({"name": "northwind", "numbers": ["+4950777"]})

    _rewrite(sbc, add_tenant)
    sbc.signal_main(signal.SIGHUP)  # at once, not at the next poll
    wait_until(lambda: "northwind" in bed.status()["tenants"], 10, "northwind in /teams")
    assert bed.status()["tenants"]["northwind"] == f"northwind.{FQDN}"
    assert _call(bed, sipp_factory, NEW_NUMBER) == 1
    invite = list(bed.peers["sip"].dialogs.values())[-1].invite
    assert f"northwind.{FQDN}" in (invite.headers.get("contact") or "")
    assert invite.uri.startswith(f"sip:{NEW_NUMBER}@sip.pstnhub.microsoft.com")
    scrape = sbc.metrics()
    assert scrape.value("sbc_config_reload_total", result="applied") == 1
    assert scrape.value("sbc_config_generation") == 2
    assert sbc.proc.pid == pid and sbc.alive()
    status = _config_status(sbc)
    assert status["generation"] == 2 and status["last_result"] == "applied"
    # The old tenants still take calls.
    assert _call(bed, sipp_factory, "+4930123456") == 1


def test_a_broken_file_is_refused_and_the_old_config_stays(
    beds: BedFactory, sipp_factory: SippFactory
) -> None:
    bed = _fast_bed(beds)
    sbc = bed.sbc

    def broken(config: dict[str, Any]) -> None:  # two tenants claim one number
        config["teams"]["tenants"].append({"name": "northwind", "numbers": ["+4930123"]})

    _rewrite(sbc, broken)
    sbc.signal_main(signal.SIGHUP)
    wait_until(lambda: _reloads(sbc, "rejected") == 1, 10, "the broken file rejected")
    status = _config_status(sbc)
    assert status["generation"] == 1 and status["last_result"] == "rejected"
    assert "belongs to tenants" in status["last_error"]
    errors = [r for r in sbc.log_records() if r.get("msg", "").startswith("config file ref")]
    assert errors and "+4930123" in errors[0]["error"]
    # Not YAML at all: the same, found by the periodic check this time (no SIGHUP).
    sbc.config_path.write_text("listeners: [\n")
    wait_until(lambda: _reloads(sbc, "rejected") == 2, 15, "the non-YAML file rejected")
    assert "northwind" not in bed.status()["tenants"]
    assert sbc.alive() and sbc.readiness()[0]
    assert _call(bed, sipp_factory, "+4930123456") == 1  # contoso, as before
    assert sbc.metrics().value("sbc_config_generation") == 1


def test_a_listener_change_waits_for_a_restart(beds: BedFactory) -> None:
    bed = _fast_bed(beds)
    sbc = bed.sbc
    carrier_port = sbc.port("carrier")

    def move_listener(config: dict[str, Any]) -> None:
        config["listeners"][1]["port"] = carrier_port + 1
        config["teams"]["tenants"].append({"name": "northwind", "numbers": ["+4950777"]})

    _rewrite(sbc, move_listener)
    sbc.signal_main(signal.SIGHUP)
    wait_until(lambda: _reloads(sbc, "restart_required") == 1, 10, "restart_required counted")
    status = _config_status(sbc)
    assert status["restart_required"] == ["listeners"]
    assert status["generation"] == 1
    assert sbc.metrics().value("sbc_config_restart_required") == 1
    # Nothing of the file was taken over, not even the tenant; the SBC stays ready.
    assert "northwind" not in bed.status()["tenants"]
    assert sbc.readiness()[0]
    warned = [r for r in sbc.log_records() if r.get("keys") == ["listeners"]]
    assert warned and "restart" in warned[0]["msg"]


def test_each_worker_reloads_itself(sbc_factory: SbcFactory, sipp_factory: SippFactory) -> None:
    """``workers: 2``: a new route reaches both workers (SIGHUP to the supervisor is passed on
    to them), and the calls both take go to the new next hop."""
    old_uas = sipp_factory.uas(scenario=SCENARIOS / "uas_answer.xml")
    new_trace = sipp_factory.log_dir / "new-uas.messages.log"
    new_uas = sipp_factory.uas(
        scenario=SCENARIOS / "uas_answer.xml",
        extra_args=["-trace_msg", "-message_file", str(new_trace)],
    )
    sbc = sbc_factory(
        routes=[{"name": "uas", "next_hop": f"sip:{old_uas.address}"}],
        workers=2,
        config_reload_seconds=0.5,
    )

    def reroute(config: dict[str, Any]) -> None:
        config["routes"][0]["next_hop"] = f"sip:{new_uas.address}"

    _rewrite(sbc, reroute)
    wait_until(lambda: _reloads(sbc, "applied") == 2, 10, "both workers applied the file")
    assert sbc.metrics().value("sbc_config_generation") == 4  # summed over the two workers
    callers(sbc, sipp_factory, count=3, calls=6)
    invites = per_worker(sbc, "INVITE")
    assert min(invites.values()) > 0 and sum(invites.values()) == 18, invites
    received = [t for t in read_trace(new_trace) if t.direction == "received"]
    assert len([t for t in received if t.method == "INVITE"]) == 18
    # A broken file: each worker refuses it and keeps running.
    sbc.config_path.write_text("workers: two\n")
    sbc.signal_main(signal.SIGHUP)
    wait_until(lambda: _reloads(sbc, "rejected") == 2, 10, "both workers refused the file")
    assert sbc.readiness()[0]
    sbc.wait_idle()
