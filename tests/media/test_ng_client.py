"""The product's asyncio ng client and relay pool against the real rtpengine (Debian 10.5)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from teams_sbc.media.config import MediaConfig, RtpengineInstance
from teams_sbc.media.errors import NgError, NgTimeout, NoRelayAvailable, UnknownRelay
from teams_sbc.media.legs import Leg, MediaPolicy
from teams_sbc.media.ng import NgClient, RetrySchedule
from teams_sbc.media.relays import RelayPool
from tests.media.peers import carrier_sdp, eventually, frozen, pool_for, run, started
from tests.testbed.rtpengine import Rtpengine

POLICY = MediaPolicy()


async def connected(engine: Rtpengine, schedule: RetrySchedule | None = None) -> NgClient:
    client = NgClient(engine.host, engine.ng_port, schedule=schedule)
    await client.connect()
    return client


def test_commands_of_rtpengine_10_5(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        ng = await connected(rtpengine)
        try:
            assert await ng.list_calls() == []
            assert 0 < await ng.ping() < 0.5
            offer = await ng.offer({"call-id": "cmd-1", "from-tag": "a", "sdp": carrier_sdp(40000)})
            assert offer["result"] == "ok" and "m=audio" in offer["sdp"]
            assert await ng.list_calls() == ["cmd-1"]
            query = await ng.query("cmd-1")
            assert set(query["tags"]) >= {"a"}
            stats = await ng.statistics()
            assert stats["currentstatistics"]["sessionsown"] == 1
            deleted = await ng.delete({"call-id": "cmd-1", "from-tag": "a"})
            assert deleted["result"] == "ok"
            assert await ng.list_calls() == []
        finally:
            ng.close()

    run(scenario())


def test_error_result_is_a_typed_error_with_rtpengines_reason(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        ng = await connected(rtpengine)
        try:
            with pytest.raises(NgError) as info:
                await ng.answer(
                    {"call-id": "nope", "from-tag": "a", "to-tag": "b", "sdp": carrier_sdp(1)}
                )
            assert "Unknown call-id" in info.value.reason
            with pytest.raises(NgError) as info:
                await ng.command("no such command")
            assert info.value.reason  # rtpengine says why
        finally:
            ng.close()

    run(scenario())


def test_many_concurrent_commands_on_one_socket(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        ng = await connected(rtpengine)
        try:
            calls = [f"conc-{i}" for i in range(4)]  # 4 ports each: 16 of the 20
            offers = await asyncio.gather(
                *(
                    ng.offer({"call-id": c, "from-tag": "a", "sdp": carrier_sdp(40000 + 2 * i)})
                    for i, c in enumerate(calls)
                ),
                *(ng.ping() for _ in range(20)),
            )
            assert all(o for o in offers)
            assert sorted(await ng.list_calls()) == sorted(calls)
            await asyncio.gather(*(ng.delete({"call-id": c, "from-tag": "a"}) for c in calls))
            assert await ng.list_calls() == []
            assert ng.core.counters.retransmitted == 0 and ng.core.counters.stray == 0
        finally:
            ng.close()

    run(scenario())


def test_silent_rtpengine_times_out_marks_down_and_comes_back(rtpengine: Rtpengine) -> None:
    """SIGSTOP: the socket is open but nobody reads it, as with a hung daemon."""
    assert rtpengine.proc is not None
    proc = rtpengine.proc

    async def scenario() -> None:
        pool = pool_for(rtpengine, schedule=RetrySchedule((0.1, 0.2)), ping_timeout=0.2)
        async with started(pool):
            (relay,) = pool.relays
            assert relay.health.up and pool.ready
            loop = asyncio.get_running_loop()
            with frozen(proc):
                began = loop.time()
                with pytest.raises(NgTimeout) as info:
                    await relay.offer(
                        call_id="stuck",
                        from_tag="a",
                        sdp=carrier_sdp(40000),
                        towards=Leg.TEAMS,
                        policy=POLICY,
                    )
                waited = loop.time() - began
                # The configured 0.1 + 0.2 s, not 3.5 (the loop's clock may round a hair early).
                assert 0.29 <= waited < 1.0, waited
                assert info.value.attempts == 2
                assert not relay.health.up and not pool.ready
                assert "no answer to 'offer'" in (relay.health.last_error or "")
                with pytest.raises(NoRelayAvailable):
                    pool.pick()
                await pool.check_all()  # pings go unanswered too
                assert not relay.health.up

            async def back_up() -> bool:
                await pool.check_all()
                return relay.health.up

            await eventually(back_up, 5.0, "rtpengine to answer pings again")
            assert pool.pick() is relay
            # The offer sent while it was stopped was processed late: its answer was ignored
            # as stray, and the session it created is cleaned up here.
            await relay.delete(call_id="stuck", from_tag="a")
            assert await relay.client.list_calls() == []

    run(scenario())


def test_periodic_pings_follow_an_instance_down_and_up(rtpengine: Rtpengine) -> None:
    assert rtpengine.proc is not None
    proc = rtpengine.proc

    async def scenario() -> None:
        pool = pool_for(rtpengine, ping_interval=0.1, ping_timeout=0.1)
        await pool.start()  # with the background checker
        try:
            (relay,) = pool.relays

            async def is_up() -> bool:
                return relay.health.up

            async def is_down() -> bool:
                return not relay.health.up

            with frozen(proc):
                await eventually(is_down, 3.0, "the health pings to mark it down")
                assert "no answer to 'ping'" in (relay.health.last_error or "")
            await eventually(is_up, 3.0, "the health pings to mark it up again")
            assert relay.health.rtt is not None and relay.health.rtt < 0.1
        finally:
            await pool.close()

    run(scenario())


def test_unreachable_port_is_down_with_the_socket_error(
    rtpengine_factory: Callable[..., Rtpengine],
) -> None:
    engine = rtpengine_factory()
    engine.stop()  # nothing listens there now: ICMP port unreachable

    async def scenario() -> None:
        pool = pool_for(engine, ping_timeout=0.2)
        async with started(pool):
            (relay,) = pool.relays
            assert relay.health.checked and not relay.health.up
            assert "ConnectionRefusedError" in (relay.health.last_error or "")
            assert relay.health.transport_errors >= 1

    run(scenario())


def test_round_robin_least_loaded_down_skipped_and_tokens(
    rtpengine_factory: Callable[..., Rtpengine],
) -> None:
    a, b = rtpengine_factory(), rtpengine_factory()
    assert a.proc is not None
    a_proc = a.proc

    async def scenario() -> None:
        async with started(pool_for(a, b, selection="round-robin")) as pool:
            first, second = pool.relays
            assert [pool.pick() for _ in range(4)] == [first, second, first, second]

        async with started(pool_for(a, b, selection="least-loaded", ping_timeout=0.3)) as pool:
            first, second = pool.relays
            for i in range(2):  # two calls anchored on `a` by someone else
                await first.offer(
                    call_id=f"load-{i}",
                    from_tag="x",
                    sdp=carrier_sdp(40000 + 2 * i),
                    towards=Leg.TEAMS,
                    policy=POLICY,
                )
            await pool.check_all()
            assert (first.health.sessions, second.health.sessions) == (2, 0)
            assert first.health.ports_free is not None
            picks = [pool.pick() for _ in range(3)]
            assert picks[:2] == [second, second]  # b until it carries as many as a
            for i in range(2):
                await first.delete(call_id=f"load-{i}", from_tag="x")

            with frozen(a_proc):
                await pool.check_all()
                assert not first.health.up and second.health.up
                assert {pool.pick() for _ in range(3)} == {second}
                assert pool.instance_for_token(first.token) is first  # still reachable by token
            with pytest.raises(UnknownRelay):
                pool.instance_for_token("not-configured")
            for relay in pool.relays:
                assert await relay.client.list_calls() == []

    run(scenario())


def test_another_replica_finds_the_call_by_token(
    rtpengine_factory: Callable[..., Rtpengine],
) -> None:
    """Two SBC replicas on the same config: one anchors the call, the other re-offers and
    deletes it by the token that travelled in Record-Route."""
    engines = [rtpengine_factory(), rtpengine_factory()]
    config = MediaConfig(rtpengines=[RtpengineInstance(address=e.ng_address) for e in engines])

    async def scenario() -> None:
        async with (
            started(RelayPool.from_config(config)) as replica_1,
            started(RelayPool.from_config(config)) as replica_2,
        ):
            relay = replica_1.pick()
            await relay.offer(
                call_id="sticky",
                from_tag="f",
                sdp=carrier_sdp(40000),
                towards=Leg.TEAMS,
                policy=POLICY,
            )
            token = relay.token

            other = replica_2.instance_for_token(token)
            assert other.address == relay.address and other is not relay
            reoffer = await other.offer(
                call_id="sticky",
                from_tag="f",
                sdp=carrier_sdp(40000, version=2),
                towards=Leg.TEAMS,
                policy=POLICY,
            )
            assert "RTP/SAVP" in reoffer
            await other.delete(call_id="sticky", from_tag="f")
            for r in replica_1.relays:
                assert await r.client.list_calls() == []

    run(scenario())
