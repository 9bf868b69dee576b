"""Real packets through the real rtpengine: the carrier's plain RTP reaches Teams as SRTP that
decrypts (with the key rtpengine put in its SDP) to the same payload bytes, and Teams' SRTP
(encrypted with our own key) reaches the carrier as plain RTP. Every test checks with
rtpengine's `list` that no session is left behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from teams_sbc.media.legs import Leg, MediaPolicy
from teams_sbc.media.relays import MediaRelay, RelayPool
from teams_sbc.media.rtp import RtpPacket, is_rtcp
from teams_sbc.media.srtp import SdesKey, SrtpSession
from tests.media.peers import (
    HOST,
    TELEPHONE_EVENT,
    UdpPeer,
    audio,
    carrier_sdp,
    crypto_keys,
    dtmf_event,
    pcmu_packets,
    pool_for,
    run,
    started,
    teams_sdp,
)
from tests.media.stun import (
    BINDING_ERROR,
    BINDING_SUCCESS,
    StunMessage,
    binding_request,
    ice_lite_sdp,
    is_stun,
)
from tests.testbed.rtpengine import Rtpengine

POLICY = MediaPolicy()
CARRIER_TAG, TEAMS_TAG = "carrier-tag", "teams-tag"


@dataclass
class Call:
    """One anchored call as both endpoints see it."""

    relay: MediaRelay
    call_id: str
    carrier: UdpPeer
    teams: UdpPeer
    to_teams: str = ""  # the SDP rtpengine gave Teams last
    to_carrier: str = ""  # the SDP rtpengine gave the carrier last
    teams_key: SdesKey | None = None  # what Teams encrypts with (its own key)

    @property
    def rtpengine_key(self) -> SdesKey:
        """The key rtpengine encrypts towards Teams with: its crypto line under our tag."""
        assert self.teams_key is not None
        (key,) = [k for k in crypto_keys(self.to_teams) if k.tag == self.teams_key.tag]
        return key

    async def carrier_to_teams(self, packets: list[RtpPacket]) -> list[RtpPacket]:
        """Send plain RTP as the carrier; what Teams receives, decrypted with rtpengine's key."""
        port = audio(self.to_carrier).port
        for packet in packets:
            self.carrier.send(packet.encode(), port)
        receiver = SrtpSession(self.rtpengine_key, outbound=False)
        out: list[RtpPacket] = []
        while len(out) < len(packets):
            data = await self.teams.receive()
            assert data[0] >> 6 == 2, f"not RTP (a STUN check?): {data[:4].hex()}"
            if not is_rtcp(data):
                out.append(RtpPacket.decode(receiver.unprotect(data)))
        return out

    async def teams_to_carrier(self, packets: list[RtpPacket]) -> list[RtpPacket]:
        """Send SRTP as Teams, encrypted with Teams' own key; what the carrier receives."""
        assert self.teams_key is not None
        sender = SrtpSession(self.teams_key, outbound=True)
        port = audio(self.to_teams).port
        for packet in packets:
            self.teams.send(sender.protect(packet.encode()), port)
        out: list[RtpPacket] = []
        while len(out) < len(packets):
            out.append(RtpPacket.decode(await self.carrier.receive()))
        return out


@contextlib.asynccontextmanager
async def anchored(pool: RelayPool, call_id: str) -> AsyncIterator[Call]:
    """A carrier-to-Teams call: offer on the carrier's INVITE, answer on Teams' 200."""
    carrier, teams = await UdpPeer.open(), await UdpPeer.open()
    relay = pool.pick()
    before = await relay.client.list_calls()
    call = Call(relay, call_id, carrier, teams)
    try:
        call.to_teams = await relay.offer(
            call_id=call_id,
            from_tag=CARRIER_TAG,
            sdp=carrier_sdp(carrier.port),
            towards=Leg.TEAMS,
            policy=POLICY,
        )
        call.teams_key = SdesKey.generate("AES_CM_128_HMAC_SHA1_80", tag=1)
        call.to_carrier = await relay.answer(
            call_id=call_id,
            from_tag=CARRIER_TAG,
            to_tag=TEAMS_TAG,
            sdp=teams_sdp(teams.port, [call.teams_key]),
            towards=Leg.CARRIER,
            policy=POLICY,
        )
        yield call
    finally:
        await relay.delete(call_id=call_id, from_tag=CARRIER_TAG, to_tag=TEAMS_TAG)
        carrier.close()
        teams.close()
        assert await relay.client.list_calls() == before, "rtpengine kept a session"


@contextlib.asynccontextmanager
async def call_peers(
    relay: MediaRelay, call_id: str, from_tag: str, count: int
) -> AsyncIterator[list[UdpPeer]]:
    """``count`` UDP peers for call ``call_id``; then the call is deleted (by ``from_tag``: all
    of it) and the peers closed, and, unless the test failed, rtpengine holds no session."""
    peers = [await UdpPeer.open() for _ in range(count)]
    try:
        yield peers
    finally:
        await relay.delete(call_id=call_id, from_tag=from_tag)
        for peer in peers:
            peer.close()
    assert await relay.client.list_calls() == []


def payloads(packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """What a receiver plays out: packets in sequence-number order. RTP runs over UDP, and
    rtpengine's first packet of a stream may take its slower learning path and arrive after
    the second, so arrival order is not part of the contract; every payload byte is."""
    return sorted((p.payload_type, p.sequence, p.payload) for p in packets)


def events(packets: list[RtpPacket]) -> list[tuple[int, int, bool, int, bytes]]:
    """What an RFC 4733 receiver reads: per packet in sequence order, its payload type,
    marker, timestamp and event payload."""
    return sorted((p.sequence, p.payload_type, p.marker, p.timestamp, p.payload) for p in packets)


def test_carrier_rtp_becomes_teams_srtp_and_back(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool, anchored(pool, "pkt-1") as call:
            offer = audio(call.to_teams)
            assert offer.protocol == "RTP/SAVP" and offer.rtcp_mux
            assert {k.suite for k in crypto_keys(call.to_teams)} == {
                "AES_CM_128_HMAC_SHA1_80",
                "AES_CM_128_HMAC_SHA1_32",
            }
            assert not offer.attribute_values("fingerprint") and "ice-ufrag" not in call.to_teams
            answer = audio(call.to_carrier)
            assert (answer.protocol, answer.formats) == ("RTP/AVP", ("0", "8", "101"))
            assert "crypto" not in call.to_carrier and not answer.rtcp_mux

            sent = pcmu_packets(5, ssrc=0x11111111)
            assert payloads(await call.carrier_to_teams(sent)) == payloads(sent)

            back = pcmu_packets(5, ssrc=0x22222222, first_seq=7000, marker=100)
            assert payloads(await call.teams_to_carrier(back)) == payloads(back)

            # RFC 4733 events pass through untouched both ways: payload type 101, marker on
            # the first packet, the end bit on the last three, the same 4-byte payloads.
            press = dtmf_event(5, ssrc=0x11111111, first_seq=1005, timestamp=160 * 1005)
            got = await call.carrier_to_teams(press)
            assert events(got) == events(press)
            assert all(p.payload_type == TELEPHONE_EVENT for p in got)
            press = dtmf_event(11, ssrc=0x22222222, first_seq=7005, timestamp=160 * 7005)
            assert events(await call.teams_to_carrier(press)) == events(press)

    run(scenario())


def test_hold_reaches_teams_as_inactive_and_resume_restores_media(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool, anchored(pool, "hold-1") as call:
            relay, port = call.relay, call.carrier.port
            for version, held in [
                (2, carrier_sdp(port, version=2, direction="sendonly")),
                (3, carrier_sdp(port, version=3, ip="0.0.0.0")),  # RFC 2543 style hold
            ]:
                to_teams = await relay.offer(
                    call_id=call.call_id,
                    from_tag=CARRIER_TAG,
                    to_tag=TEAMS_TAG,
                    sdp=held,
                    towards=Leg.TEAMS,
                    policy=POLICY,
                )
                media = audio(to_teams)
                assert media.direction == "inactive", (version, to_teams)
                assert "sendonly" not in to_teams and "recvonly" not in to_teams
                assert media.address == "127.0.0.1"  # never c=0.0.0.0 towards Teams
                assert call.teams_key is not None
                await relay.answer(
                    call_id=call.call_id,
                    from_tag=CARRIER_TAG,
                    to_tag=TEAMS_TAG,
                    sdp=teams_sdp(call.teams.port, [call.teams_key], version, "inactive"),
                    towards=Leg.CARRIER,
                    policy=POLICY,
                )

            call.to_teams = await relay.offer(
                call_id=call.call_id,
                from_tag=CARRIER_TAG,
                to_tag=TEAMS_TAG,
                sdp=carrier_sdp(port, version=4),
                towards=Leg.TEAMS,
                policy=POLICY,
            )
            assert audio(call.to_teams).direction == "sendrecv"
            assert call.teams_key is not None
            call.to_carrier = await relay.answer(
                call_id=call.call_id,
                from_tag=CARRIER_TAG,
                to_tag=TEAMS_TAG,
                sdp=teams_sdp(call.teams.port, [call.teams_key], 4),
                towards=Leg.CARRIER,
                policy=POLICY,
            )
            sent = pcmu_packets(3, ssrc=0x33333333, first_seq=2000)
            assert payloads(await call.carrier_to_teams(sent)) == payloads(sent)

    run(scenario())


def test_teams_reinvite_with_new_keys_keeps_media_flowing(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool, anchored(pool, "rekey-1") as call:
            relay = call.relay
            first = pcmu_packets(3, ssrc=0x44444444, first_seq=3000)
            assert payloads(await call.teams_to_carrier(first)) == payloads(first)
            old_key = call.teams_key

            # Teams re-INVITEs (its tag is now the From tag) with a fresh key of its own.
            call.teams_key = SdesKey.generate("AES_CM_128_HMAC_SHA1_80", tag=1)
            to_carrier = await relay.offer(
                call_id=call.call_id,
                from_tag=TEAMS_TAG,
                to_tag=CARRIER_TAG,
                sdp=teams_sdp(call.teams.port, [call.teams_key], version=2),
                towards=Leg.CARRIER,
                policy=POLICY,
            )
            assert "crypto" not in to_carrier and audio(to_carrier).protocol == "RTP/AVP"
            call.to_teams = await relay.answer(
                call_id=call.call_id,
                from_tag=TEAMS_TAG,
                to_tag=CARRIER_TAG,
                sdp=carrier_sdp(call.carrier.port, version=2),
                towards=Leg.TEAMS,
                policy=POLICY,
            )
            (answer_key,) = crypto_keys(call.to_teams)
            assert answer_key.tag == 1 and answer_key.suite == "AES_CM_128_HMAC_SHA1_80"
            assert call.teams_key != old_key

            after = pcmu_packets(3, ssrc=0x44444444, first_seq=3003, marker=50)
            assert payloads(await call.teams_to_carrier(after)) == payloads(after)
            back = pcmu_packets(3, ssrc=0x55555555, first_seq=100)
            assert payloads(await call.carrier_to_teams(back)) == payloads(back)

    run(scenario())


def test_call_from_teams_with_microsoft_sdp(rtpengine: Rtpengine) -> None:
    """Teams offers (ICE candidates, x-candidate-ipv6, rtcp-mux, an MKI on its first key and a
    second key without); the carrier gets plain RTP/AVP with its codecs and no candidates."""

    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool:
            relay = pool.pick()
            mki_key = SdesKey(
                2, "AES_CM_128_HMAC_SHA1_80", SdesKey.generate().key_salt, "2^31", 1, 1
            )
            plain_key = SdesKey(3, "AES_CM_128_HMAC_SHA1_80", SdesKey.generate().key_salt, "2^31")
            async with call_peers(relay, "out-1", TEAMS_TAG, 2) as (carrier, teams):
                to_carrier = await relay.offer(
                    call_id="out-1",
                    from_tag=TEAMS_TAG,
                    sdp=teams_sdp(teams.port, [mki_key, plain_key], ice=True),
                    towards=Leg.CARRIER,
                    policy=POLICY,
                )
                offer = audio(to_carrier)
                assert offer.protocol == "RTP/AVP"
                assert offer.formats == ("0", "8", "101", "13")  # the codecs Teams offered
                for gone in ("crypto", "candidate", "ice-", "x-candidate", "rtcp-mux"):
                    assert gone not in to_carrier, gone
                to_teams = await relay.answer(
                    call_id="out-1",
                    from_tag=TEAMS_TAG,
                    to_tag=CARRIER_TAG,
                    sdp=carrier_sdp(carrier.port),
                    towards=Leg.TEAMS,
                    policy=POLICY,
                )
                answer = audio(to_teams)
                assert answer.protocol == "RTP/SAVP" and answer.rtcp_mux
                (ours,) = crypto_keys(to_teams)
                assert ours.tag == 2 and ours.mki is None  # Teams' first key, MKI and all
                call = Call(relay, "out-1", carrier, teams, to_teams, to_carrier, mki_key)
                sent = pcmu_packets(4, ssrc=0x66666666)
                assert payloads(await call.teams_to_carrier(sent)) == payloads(sent)
                back = pcmu_packets(4, ssrc=0x77777777, first_seq=9000)
                assert payloads(await call.carrier_to_teams(back)) == payloads(back)

    run(scenario())


def test_teams_offering_only_the_32_bit_tag_is_accepted(rtpengine: Rtpengine) -> None:
    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool:
            relay = pool.pick()
            key = SdesKey.generate("AES_CM_128_HMAC_SHA1_32", tag=1)
            async with call_peers(relay, "out-32", TEAMS_TAG, 2) as (carrier, teams):
                to_carrier = await relay.offer(
                    call_id="out-32",
                    from_tag=TEAMS_TAG,
                    sdp=teams_sdp(teams.port, [key]),
                    towards=Leg.CARRIER,
                    policy=POLICY,
                )
                to_teams = await relay.answer(
                    call_id="out-32",
                    from_tag=TEAMS_TAG,
                    to_tag=CARRIER_TAG,
                    sdp=carrier_sdp(carrier.port),
                    towards=Leg.TEAMS,
                    policy=POLICY,
                )
                (ours,) = crypto_keys(to_teams)
                assert ours.suite == "AES_CM_128_HMAC_SHA1_32"
                call = Call(relay, "out-32", carrier, teams, to_teams, to_carrier, key)
                sent = pcmu_packets(3, ssrc=0x88888888)
                assert payloads(await call.teams_to_carrier(sent)) == payloads(sent)
                assert payloads(await call.carrier_to_teams(sent)) == payloads(sent)

    run(scenario())


BYPASS = MediaPolicy(bypass=True)
TEAMS_UFRAG, TEAMS_PWD = "TmsC", "teams-client-ice-password"


def bypass_answer(default: UdpPeer, reflexive: UdpPeer, key: SdesKey) -> str:
    """A Teams client's answer in media bypass: full ICE, a host candidate (also its c= address)
    and a server-reflexive one (its NAT's address: here another socket), rtcp-mux, SDES."""
    return (
        f"v=0\r\no=- 3000 1 IN IP4 {HOST}\r\ns=session\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {default.port} RTP/SAVP 0 101\r\n"
        f"a=ice-ufrag:{TEAMS_UFRAG}\r\na=ice-pwd:{TEAMS_PWD}\r\n"
        f"a=candidate:1 1 UDP 2130706431 {HOST} {default.port} typ host\r\n"
        f"a=candidate:2 1 UDP 1694498815 {HOST} {reflexive.port} typ srflx "
        f"raddr {HOST} rport {default.port}\r\n"
        f"a={key.attribute()}\r\na=rtcp-mux\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
        "a=sendrecv\r\n"
    )


async def check(peer: UdpPeer, port: int, ufrag: str, pwd: str, *, nominate: bool) -> StunMessage:
    """Teams' connectivity check from ``peer`` to rtpengine: its answer, proven rtpengine's."""
    request, transaction = binding_request(f"{ufrag}:{TEAMS_UFRAG}", pwd, nominate=nominate)
    peer.send(request, port)
    response = StunMessage.parse(await peer.receive())
    assert response.transaction == transaction
    assert response.kind == BINDING_SUCCESS
    assert response.integrity_ok(pwd) and response.fingerprint_ok()
    assert response.mapped_address() == (HOST, peer.port)  # where the check came from
    return response


async def srtp_at(peer: UdpPeer, key: SdesKey, count: int) -> list[RtpPacket]:
    """``count`` SRTP packets at ``peer``, decrypted; any STUN request there is a failure: an
    ICE-lite agent never sends checks (Microsoft: "must not send any connectivity check")."""
    receiver = SrtpSession(key, outbound=False)
    out: list[RtpPacket] = []
    while len(out) < count:
        data = await peer.receive()
        assert not is_stun(data), f"rtpengine sent STUN: {StunMessage.parse(data).kind:#06x}"
        out.append(RtpPacket.decode(receiver.unprotect(data)))
    return out


def test_media_bypass_rtpengine_is_ice_lite_towards_teams(rtpengine: Rtpengine) -> None:
    """A carrier call to a Teams client in media bypass: the offer has one ICE-lite candidate;
    the client's early media goes to its c= address until its checks nominate another path
    (its NAT's), then the carrier's audio follows there; rtpengine answers each check signed
    with its own password, refuses a check with another password, and sends none itself."""

    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool:
            relay = pool.pick()
            teams_key = SdesKey.generate("AES_CM_128_HMAC_SHA1_80", tag=1)
            async with call_peers(relay, "bypass-1", CARRIER_TAG, 3) as peers:
                carrier, default, reflexive = peers
                to_teams = await relay.offer(
                    call_id="bypass-1", from_tag=CARRIER_TAG, sdp=carrier_sdp(carrier.port),
                    towards=Leg.TEAMS, policy=BYPASS,
                )  # fmt: skip
                ufrag, pwd, port = ice_lite_sdp(to_teams)
                (rtpengine_key,) = [k for k in crypto_keys(to_teams) if k.tag == 1]
                to_carrier = await relay.answer(
                    call_id="bypass-1", from_tag=CARRIER_TAG, to_tag=TEAMS_TAG,
                    sdp=bypass_answer(default, reflexive, teams_key), towards=Leg.CARRIER,
                    policy=BYPASS,
                )  # fmt: skip
                answer = audio(to_carrier)
                assert answer.protocol == "RTP/AVP"
                for gone in ("ice-", "candidate", "crypto", "rtcp-mux"):
                    assert gone not in to_carrier, gone
                # Before any check: media goes to the client's c= address (early media).
                early = pcmu_packets(3, ssrc=0x12121212)
                for packet in early:
                    carrier.send(packet.encode(), answer.port)
                assert payloads(await srtp_at(default, rtpengine_key, 3)) == payloads(early)
                # A check signed with another password is refused (RFC 8445 7.3: 401).
                forged, _ = binding_request(f"{ufrag}:{TEAMS_UFRAG}", "not-the-password")
                reflexive.send(forged, port)
                refused = StunMessage.parse(await reflexive.receive())
                assert refused.kind == BINDING_ERROR
                await check(reflexive, port, ufrag, pwd, nominate=False)
                await check(reflexive, port, ufrag, pwd, nominate=True)
                # Nominated: the carrier's audio follows the client to its reflexive address.
                later = pcmu_packets(3, ssrc=0x12121212, first_seq=2000, marker=40)
                for packet in later:
                    carrier.send(packet.encode(), answer.port)
                assert payloads(await srtp_at(reflexive, rtpengine_key, 3)) == payloads(later)
                assert default.received.empty()
                # And the client's SRTP from there reaches the carrier as plain RTP.
                sender = SrtpSession(teams_key, outbound=True)
                back = pcmu_packets(3, ssrc=0x34343434, first_seq=500, marker=90)
                for packet in back:
                    reflexive.send(sender.protect(packet.encode()), port)
                got = [RtpPacket.decode(await carrier.receive()) for _ in back]
                assert payloads(got) == payloads(back)

    run(scenario())


def test_media_bypass_call_from_teams_keeps_ice_credentials_from_183_to_200(
    rtpengine: Rtpengine,
) -> None:
    """A Teams client calls in media bypass: the carrier gets no ICE; the answer to Teams is
    ICE-lite with one candidate, and the 200's repeats the 183's ufrag, password and candidate
    (Microsoft: "must not change ICE candidates, password, and ufrag between 183 and 200");
    the client's checks are answered and media flows both ways on the nominated path."""

    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool:
            relay = pool.pick()
            teams_key = SdesKey.generate("AES_CM_128_HMAC_SHA1_80", tag=1)
            async with call_peers(relay, "bypass-2", TEAMS_TAG, 3) as (carrier, default, reflexive):
                to_carrier = await relay.offer(
                    call_id="bypass-2", from_tag=TEAMS_TAG,
                    sdp=bypass_answer(default, reflexive, teams_key), towards=Leg.CARRIER,
                    policy=BYPASS,
                )  # fmt: skip
                for gone in ("ice-", "candidate", "crypto", "rtcp-mux"):
                    assert gone not in to_carrier, gone
                answers = []
                for _response in ("183", "200"):  # the carrier's SDP on each: two answers
                    answer = await relay.answer(
                        call_id="bypass-2", from_tag=TEAMS_TAG, to_tag=CARRIER_TAG,
                        sdp=carrier_sdp(carrier.port), towards=Leg.TEAMS, policy=BYPASS,
                    )  # fmt: skip
                    answers.append(answer)
                ice = [
                    [a for a in audio(sdp).attributes if a.startswith(("ice-", "candidate"))]
                    for sdp in answers
                ]
                assert ice[0] == ice[1]
                ufrag, pwd, port = ice_lite_sdp(answers[1])
                (rtpengine_key,) = crypto_keys(answers[1])
                await check(reflexive, port, ufrag, pwd, nominate=True)
                sender = SrtpSession(teams_key, outbound=True)
                sent = pcmu_packets(3, ssrc=0x56565656)
                for packet in sent:
                    reflexive.send(sender.protect(packet.encode()), port)
                got = [RtpPacket.decode(await carrier.receive()) for _ in sent]
                assert payloads(got) == payloads(sent)
                back = pcmu_packets(3, ssrc=0x78787878, first_seq=800)
                for packet in back:
                    carrier.send(packet.encode(), audio(to_carrier).port)
                assert payloads(await srtp_at(reflexive, rtpengine_key, 3)) == payloads(back)

    run(scenario())


# -- forks: Teams answers from several forks, each with its own To tag, media and key --------


async def flowing(
    carrier: UdpPeer, carrier_port: int, fork: UdpPeer, teams_port: int,
    rtpengine_key: SdesKey, fork_key: SdesKey, seq: int,
) -> None:  # fmt: skip
    """Carrier RTP reaches the fork as SRTP that decrypts with rtpengine's key, the fork's SRTP
    (its own key) reaches the carrier as the same RTP."""
    sent = pcmu_packets(3, ssrc=0x0F0F0F0F, first_seq=seq)
    for packet in sent:
        carrier.send(packet.encode(), carrier_port)
    assert payloads(await srtp_at(fork, rtpengine_key, 3)) == payloads(sent)
    back = pcmu_packets(3, ssrc=0x1E1E1E1E, first_seq=seq + 500)
    sender = SrtpSession(fork_key, outbound=True)
    for packet in back:
        fork.send(sender.protect(packet.encode()), teams_port)
    got = [RtpPacket.decode(await carrier.receive()) for _ in back]
    assert payloads(got) == payloads(back)


def test_forked_answers_under_the_offers_via_branch_keep_srtp(rtpengine: Rtpengine) -> None:
    """One offer, answers from three forks (183 from A, 183 from X, 200 from B), each naming the
    offer's via-branch: rtpengine 10.5 hands the leg it offered (its port and its key, which
    every fork got in the INVITE) to the fork that answered last, which takes that fork's To
    tag. Afterwards both parties' re-INVITEs name B, and a delete from B ends the call."""
    branch = "z9hG4bKfork1"

    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool:
            relay = pool.relays[0]
            keys = {tag: SdesKey.generate(tag=1) for tag in "AXB"}
            async with call_peers(relay, "fork-1", CARRIER_TAG, 4) as (carrier, *fork_peers):
                forks = dict(zip("AXB", fork_peers, strict=True))
                to_teams = await relay.offer(
                    call_id="fork-1", from_tag=CARRIER_TAG, sdp=carrier_sdp(carrier.port),
                    towards=Leg.TEAMS, policy=POLICY, via_branch=branch,
                )  # fmt: skip
                rtpengine_key = next(k for k in crypto_keys(to_teams) if k.tag == 1)
                teams_port = audio(to_teams).port
                for n, tag in enumerate("AXB"):
                    to_carrier = await relay.answer(
                        call_id="fork-1", from_tag=CARRIER_TAG, to_tag=tag,
                        sdp=teams_sdp(forks[tag].port, [keys[tag]], version=n + 1),
                        towards=Leg.CARRIER, policy=POLICY, via_branch=branch,
                    )  # fmt: skip
                    await flowing(carrier, audio(to_carrier).port, forks[tag], teams_port,
                                  rtpengine_key, keys[tag], 1000 * (n + 1))  # fmt: skip
                reply = await relay.command("query", {"call-id": "fork-1"})
                assert sorted(reply["tags"]) == sorted([CARRIER_TAG, "B"])

                # Fork B re-INVITEs with a new key, no branch: rtpengine knows B.
                new_key = SdesKey.generate(tag=1)
                to_carrier = await relay.offer(
                    call_id="fork-1", from_tag="B", to_tag=CARRIER_TAG,
                    sdp=teams_sdp(forks["B"].port, [new_key], version=5),
                    towards=Leg.CARRIER, policy=POLICY,
                )  # fmt: skip
                to_teams = await relay.answer(
                    call_id="fork-1", from_tag="B", to_tag=CARRIER_TAG,
                    sdp=carrier_sdp(carrier.port, version=2), towards=Leg.TEAMS, policy=POLICY,
                )  # fmt: skip
                (answer_key,) = crypto_keys(to_teams)
                await flowing(carrier, audio(to_carrier).port, forks["B"], audio(to_teams).port,
                              answer_key, new_key, 5000)  # fmt: skip
                # The carrier re-INVITEs fork B.
                to_teams = await relay.offer(
                    call_id="fork-1", from_tag=CARRIER_TAG, to_tag="B",
                    sdp=carrier_sdp(carrier.port, version=3), towards=Leg.TEAMS, policy=POLICY,
                )  # fmt: skip
                offer_key = next(k for k in crypto_keys(to_teams) if k.tag == 1)
                to_carrier = await relay.answer(
                    call_id="fork-1", from_tag=CARRIER_TAG, to_tag="B",
                    sdp=teams_sdp(forks["B"].port, [new_key], version=6),
                    towards=Leg.CARRIER, policy=POLICY,
                )  # fmt: skip
                await flowing(carrier, audio(to_carrier).port, forks["B"], audio(to_teams).port,
                              offer_key, new_key, 6000)  # fmt: skip
                reply = await relay.delete(call_id="fork-1", from_tag="B")
                assert "warning" not in reply

    run(scenario())


def test_forked_answer_without_via_branch_gets_a_leg_without_crypto(rtpengine: Rtpengine) -> None:
    """Why the branch is needed, as rtpengine 10.5 behaves: without it the second fork's
    answer makes a new leg for its tag that never got the offer's crypto ("SRTP output wanted,
    but no crypto suite was negotiated"), and no RTP of the carrier's reaches that fork."""

    async def scenario() -> None:
        async with started(pool_for(rtpengine)) as pool:
            relay = pool.relays[0]
            key_a, key_b = SdesKey.generate(tag=1), SdesKey.generate(tag=1)
            async with call_peers(relay, "fork-2", CARRIER_TAG, 3) as (carrier, fork_a, fork_b):
                to_teams = await relay.offer(
                    call_id="fork-2", from_tag=CARRIER_TAG, sdp=carrier_sdp(carrier.port),
                    towards=Leg.TEAMS, policy=POLICY,
                )  # fmt: skip
                rtpengine_key = next(k for k in crypto_keys(to_teams) if k.tag == 1)
                to_carrier = await relay.answer(
                    call_id="fork-2", from_tag=CARRIER_TAG, to_tag="A",
                    sdp=teams_sdp(fork_a.port, [key_a]), towards=Leg.CARRIER, policy=POLICY,
                )  # fmt: skip
                await flowing(carrier, audio(to_carrier).port, fork_a, audio(to_teams).port,
                              rtpengine_key, key_a, 100)  # fmt: skip
                to_carrier = await relay.answer(
                    call_id="fork-2", from_tag=CARRIER_TAG, to_tag="B",
                    sdp=teams_sdp(fork_b.port, [key_b], version=2), towards=Leg.CARRIER,
                    policy=POLICY,
                )  # fmt: skip
                for packet in pcmu_packets(3, ssrc=0x2D2D2D2D, first_seq=900):
                    carrier.send(packet.encode(), audio(to_carrier).port)
                with contextlib.suppress(TimeoutError):
                    while True:
                        data = await fork_b.receive(within=0.5)
                        assert data[0] >> 6 != 2 or is_rtcp(data), "B got RTP"
                reply = await relay.command("query", {"call-id": "fork-2"})
                assert sorted(reply["tags"]) == sorted([CARRIER_TAG, "A", "B"])
                log = rtpengine.proc.log_text() if rtpengine.proc is not None else ""
                assert "no crypto suite was negotiated" in log

    run(scenario())
