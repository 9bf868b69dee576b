"""What can go wrong between the SBC and rtpengine, as a small hierarchy the SIP layer can map:
:class:`NgError` (rtpengine refused: the call gets a 4xx/5xx) apart from :class:`NgTimeout` and
:class:`NoRelayAvailable` (rtpengine unreachable: 503 with Retry-After, readiness false).
"""

from __future__ import annotations


class MediaError(Exception):
    """Base of every media-layer failure."""


class NgProtocolError(MediaError):
    """A datagram that is not ``<cookie> <bencoded dict>``; it is counted and dropped."""


class NgError(MediaError):
    """rtpengine answered ``result: error``; ``reason`` is its ``error-reason``."""

    def __init__(self, command: str, reason: str, relay: str = "") -> None:
        where = f" ({relay})" if relay else ""
        super().__init__(f"rtpengine refused {command!r}{where}: {reason}")
        self.command = command
        self.reason = reason
        self.relay = relay


class NgTimeout(MediaError):
    """No answer to a command after every retransmission of its schedule."""

    def __init__(self, command: str, waited: float, attempts: int, relay: str = "") -> None:
        where = f" from {relay}" if relay else ""
        super().__init__(
            f"no answer to {command!r}{where} after {attempts} transmissions in {waited:.2f}s"
        )
        self.command = command
        self.waited = waited
        self.attempts = attempts
        self.relay = relay


class NoRelayAvailable(MediaError):
    """Every configured rtpengine is marked down: a new call cannot be anchored."""


class UnknownRelay(MediaError):
    """A dialog names an rtpengine token this SBC's configuration does not have."""
