"""Recorded-style Teams messages: the shape, header spelling (Microsoft writes names in upper
case) and size of what Microsoft's SIP proxies send, with made-up addresses and tags.

The cast: Microsoft's proxy at 52.114.75.24 (a TLS connection from port 40000), the SBC
``sbc.carrier.example`` with tenants ``contoso`` and ``fab`` (fabrikam), its Teams listener on
10.0.0.1:5061 and its carrier side on 10.0.0.5:5060 (UDP and TCP), the carrier at
192.0.2.20:5060.
"""

from __future__ import annotations

TEAMS_RR = "<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"
TEAMS_CONTACT = (
    "<sip:api-du-b-euwe.pstnhub.microsoft.com:443;x-i=4f5e6d7c-8b9a-4c3d-9e2f-1a0b9c8d7e6f;"
    "x-c=8c2f0a2e1f9b5d4c8a7e6b5d4c3b2a19/d/8/0a1b2c3d4e5f60718293a4b5c6d7e8f9>"
)

#: Teams' offer: ICE candidates, two crypto lines, SILK, G.722, G.729, G.711, CN, RED and
#: telephone-event; over 1,500 bytes once in an INVITE.
TEAMS_SDP = """v=0
o=- 0 0 IN IP4 52.115.10.20
s=session
c=IN IP4 52.115.10.20
b=CT:10000000
t=0 0
m=audio 50012 RTP/SAVP 104 9 111 18 0 8 97 13 118 101
c=IN IP4 52.115.10.20
a=rtcp:50013
a=ice-ufrag:Xq3v
a=ice-pwd:0Zq8l9Ww2m3D7wqfGgN4bY1c
a=rtcp-mux
a=candidate:1 1 UDP 2130706431 10.100.0.5 50012 typ host
a=candidate:1 2 UDP 2130705918 10.100.0.5 50013 typ host
a=candidate:2 1 UDP 1694498815 52.115.10.20 50012 typ srflx raddr 10.100.0.5 rport 50012
a=candidate:2 2 UDP 1694498302 52.115.10.20 50013 typ srflx raddr 10.100.0.5 rport 50013
a=candidate:3 1 tcp-pass 174455807 52.115.10.21 53012 typ relay raddr 52.115.10.20 rport 50012
a=candidate:3 2 tcp-pass 174455294 52.115.10.21 53012 typ relay raddr 52.115.10.20 rport 50013
a=candidate:4 1 tcp-act 174846975 52.115.10.21 53012 typ relay raddr 52.115.10.20 rport 50012
a=x-candidate-ipv6:5 1 UDP 2130706431 2603:1027:0:10::5 50012 typ host
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:QF3j5Yt3i1VZ9m0x0Yl7t7O5b8m4G3Q1Kq9Xw2Zr|2^31
a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:1L5g5c7Tq2eNf0Kd8uJv9x3s4Wb6Rr0Yt2Pp8Mm1|2^31|1:1
a=label:main-audio
a=rtpmap:104 SILK/16000
a=fmtp:104 useinbandfec=1; usedtx=0
a=rtpmap:9 G722/8000
a=rtpmap:111 SILK/8000
a=fmtp:111 useinbandfec=1; usedtx=0
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:97 RED/8000
a=rtpmap:13 CN/8000
a=rtpmap:118 CN/16000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
"""


def teams_invite(
    called: str = "+4930123456",
    host: str = "contoso.sbc.carrier.example",
    caller: str = "+4930123499",
    call_id: str = "8c2f0a2e1f9b5d4c8a7e6b5d4c3b2a19",
    branch: str = "z9hG4bKac1f2e3d",
    sdp: str = TEAMS_SDP,
) -> str:
    body = sdp.replace("\n", "\r\n")
    return (
        f"INVITE sip:{called}@{host}:5061;user=phone;transport=tls SIP/2.0\n"
        f"FROM: <sip:{caller}@sip.pstnhub.microsoft.com:5061;user=phone>;tag=3b94a1e6c7b54e1a\n"
        f"TO: <sip:{called}@{host}:5061;user=phone>\n"
        "CSEQ: 1 INVITE\n"
        f"CALL-ID: {call_id}\n"
        "MAX-FORWARDS: 70\n"
        f"VIA: SIP/2.0/TLS 52.114.75.24:5061;branch={branch}\n"
        f"RECORD-ROUTE: {TEAMS_RR}\n"
        f"CONTACT: {TEAMS_CONTACT}\n"
        "MIN-SE: 90\n"
        "SUPPORTED: timer\n"
        "USER-AGENT: Microsoft.PSTNHub.SIPProxy v.2024.5.21.3 i.EUWE.2\n"
        "CONTENT-TYPE: application/sdp\n"
        "ALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\n"
        f"P-ASSERTED-IDENTITY: <sip:{caller}@sip.pstnhub.microsoft.com:5061;user=phone>\n"
        "PRIVACY: id\n"
        "SESSION-EXPIRES: 3600\n"
        f"CONTENT-LENGTH: {len(body)}\n"
        "\n"
    ).replace("\n", "\r\n") + body


def teams_options(host: str = "sbc.carrier.example", port: int = 5061) -> str:
    return (
        f"OPTIONS sip:{host}:{port};transport=tls SIP/2.0\n"
        "FROM: <sip:sip-du-a-eu.pstnhub.microsoft.com:5061>;tag=66d4b0d7\n"
        f"TO: <sip:{host}>\n"
        "CSEQ: 1 OPTIONS\n"
        "CALL-ID: 5c1e0e57a1c44e5f8b9a\n"
        "MAX-FORWARDS: 70\n"
        "VIA: SIP/2.0/TLS 52.114.75.24:5061;branch=z9hG4bK0ptn5\n"
        "CONTACT: <sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls>\n"
        "CONTENT-LENGTH: 0\n"
        "\n"
    ).replace("\n", "\r\n")


#: The carrier's offer: plain RTP, G.711 and telephone-event.
CARRIER_SDP = """v=0
o=carrier 1 1 IN IP4 192.0.2.20
s=-
c=IN IP4 192.0.2.20
t=0 0
m=audio 20000 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
"""


def carrier_invite(
    called: str = "030123456",
    caller: str = "030999888",
    ruri_host: str = "10.0.0.5:5060",
    call_id: str = "carrier-call-1@192.0.2.20",
    branch: str = "z9hG4bKcarrier1",
    extra: str = "",
    sdp: str = CARRIER_SDP,
    method: str = "INVITE",
    to_tag: str | None = None,
    cseq: int = 1,
    route: str | None = None,
) -> str:
    body = sdp.replace("\n", "\r\n")
    to = f"<sip:{called}@{ruri_host}>" + (f";tag={to_tag}" if to_tag else "")
    route_line = f"Route: {route}\n" if route else ""
    return (
        f"{method} sip:{called}@{ruri_host} SIP/2.0\n"
        f"Via: SIP/2.0/UDP 192.0.2.20:5060;branch={branch};rport\n"
        f"{route_line}"
        "Max-Forwards: 70\n"
        f'From: "Carrier Caller" <sip:{caller}@192.0.2.20>;tag=c4rr1er\n'
        f"To: {to}\n"
        f"Call-ID: {call_id}\n"
        f"CSeq: {cseq} {method}\n"
        "Contact: <sip:gw@192.0.2.20:5060>\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY\n"
        "Record-Route: <sip:192.0.2.21:5060;lr=on>\n"
        f"{extra}"
        "Content-Type: application/sdp\n"
        f"Content-Length: {len(body)}\n"
        "\n"
    ).replace("\n", "\r\n") + body
