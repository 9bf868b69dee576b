"""SDES keys (RFC 4568 ``a=crypto``) and SRTP protection with libsrtp2 (the pylibsrtp binding).

Teams negotiates SRTP with SDES: each side puts its own master key and salt in its SDP and
encrypts what it sends with it. The Teams emulator and the tests use these helpers to encrypt
with their own key and to decrypt with the key rtpengine wrote into its SDP.

Microsoft's offers carry an MKI (``inline:<key>|2^31|1:1``); pylibsrtp does not expose MKIs,
so :class:`SrtpSession` inserts or strips the MKI itself: it sits between the encrypted payload
and the authentication tag and is not authenticated (RFC 3711 section 3.1).
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass

import pylibsrtp

#: suite name -> (libsrtp profile, master key bytes, master salt bytes, auth tag bytes)
SUITES: dict[str, tuple[int, int, int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14, 10),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14, 4),
}

_CRYPTO = re.compile(
    r"^(?:a=)?crypto:(?P<tag>\d+)\s+(?P<suite>\S+)\s+inline:(?P<key>[A-Za-z0-9+/=]+)"
    r"(?:\|(?P<lifetime>2\^\d+|\d+))?(?:\|(?P<mki>\d+):(?P<mki_len>\d+))?(?:\s+(?P<params>.*))?$"
)


class SrtpError(ValueError):
    """A crypto attribute we cannot use, or a packet that fails authentication."""


@dataclass(frozen=True)
class SdesKey:
    """One ``a=crypto`` line: tag, suite, master key + salt, optional lifetime and MKI."""

    tag: int
    suite: str
    key_salt: bytes
    lifetime: str | None = None
    mki: int | None = None
    mki_length: int = 0

    @classmethod
    def generate(cls, suite: str = "AES_CM_128_HMAC_SHA1_80", tag: int = 1) -> SdesKey:
        _, key_len, salt_len, _ = _suite(suite)
        return cls(tag, suite, secrets.token_bytes(key_len + salt_len))

    @classmethod
    def parse(cls, attribute: str) -> SdesKey:
        """From ``a=crypto:...`` (or the value without ``a=``)."""
        match = _CRYPTO.match(attribute.strip())
        if match is None:
            raise SrtpError(f"not an SDES crypto attribute: {attribute!r}")
        _, key_len, salt_len, _ = _suite(match["suite"])
        text = match["key"]
        key_salt = base64.b64decode(text + "=" * (-len(text) % 4))
        if len(key_salt) != key_len + salt_len:
            raise SrtpError(f"{match['suite']} needs {key_len + salt_len} key bytes")
        return cls(
            tag=int(match["tag"]),
            suite=match["suite"],
            key_salt=key_salt,
            lifetime=match["lifetime"],
            mki=int(match["mki"]) if match["mki"] else None,
            mki_length=int(match["mki_len"]) if match["mki_len"] else 0,
        )

    def attribute(self) -> str:
        """The SDP value (prefix it with ``a=``); base64 without padding, as rtpengine writes."""
        inline = base64.b64encode(self.key_salt).decode().rstrip("=")
        if self.lifetime:
            inline += f"|{self.lifetime}"
        if self.mki is not None:
            inline += f"|{self.mki}:{self.mki_length}"
        return f"crypto:{self.tag} {self.suite} inline:{inline}"


def _suite(name: str) -> tuple[int, int, int, int]:
    try:
        return SUITES[name]
    except KeyError:
        raise SrtpError(f"unsupported SRTP suite {name!r} (have {', '.join(SUITES)})") from None


class SrtpSession:
    """Protects what one side sends, or unprotects what it receives, under one SDES key."""

    def __init__(self, key: SdesKey, *, outbound: bool) -> None:
        profile, _, _, tag_len = _suite(key.suite)
        ssrc_type = (
            pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
        )
        self.key = key
        self._tag_len = tag_len
        self._mki = (key.mki or 0).to_bytes(key.mki_length, "big") if key.mki_length else b""
        self._session = pylibsrtp.Session(
            pylibsrtp.Policy(key=key.key_salt, ssrc_type=ssrc_type, srtp_profile=profile)
        )

    def protect(self, rtp: bytes) -> bytes:
        return self._add_mki(bytes(self._session.protect(rtp)))

    def unprotect(self, srtp: bytes) -> bytes:
        try:
            return bytes(self._session.unprotect(self._drop_mki(srtp)))
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTP unprotect failed: {exc}") from exc

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """SRTCP (RFC 3711 section 3.4): the MKI sits before the tag there too."""
        return self._add_mki(bytes(self._session.protect_rtcp(rtcp)))

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        try:
            return bytes(self._session.unprotect_rtcp(self._drop_mki(srtcp)))
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP unprotect failed: {exc}") from exc

    def _add_mki(self, packet: bytes) -> bytes:
        if not self._mki:
            return packet
        return packet[: -self._tag_len] + self._mki + packet[-self._tag_len :]

    def _drop_mki(self, packet: bytes) -> bytes:
        if not self._mki:
            return packet
        cut = len(packet) - self._tag_len - len(self._mki)
        if cut < 0 or packet[cut : cut + len(self._mki)] != self._mki:
            raise SrtpError("SRTP packet does not carry the negotiated MKI")
        return packet[:cut] + packet[cut + len(self._mki) :]
