"""The media layer: rtpengine anchors every call's media, RTP towards the carrier and SRTP
(SDES) towards Teams; this package is the SBC's side of that partnership.

- :mod:`.ng`: the ng control protocol (sans-IO :class:`NgCore`, asyncio :class:`NgClient`).
- :mod:`.relays`: several rtpengine instances, the selector, stickiness tokens, health.
- :mod:`.legs`: the ng flags per leg and the SDP edits after rtpengine (hold as inactive).
- :mod:`.sdp`, :mod:`.rtp`, :mod:`.srtp`: SDP reading and rewriting, RTP packets, SDES keys
  and SRTP (libsrtp2) for the Teams emulator, the demo and the tests.
- :mod:`.config`: the ``media`` section of the config file (:class:`MediaConfig`).

See docs/media.md.
"""

from teams_sbc.media.config import MediaConfig, RtpengineInstance
from teams_sbc.media.errors import (
    MediaError,
    NgError,
    NgProtocolError,
    NgTimeout,
    NoRelayAvailable,
    UnknownRelay,
)
from teams_sbc.media.legs import Leg, MediaPolicy, answer_params, finish_sdp, offer_params
from teams_sbc.media.ng import NgClient, NgCore, RetrySchedule
from teams_sbc.media.relays import MediaRelay, RelayHealth, RelayPool

__all__ = [
    "Leg",
    "MediaConfig",
    "MediaError",
    "MediaPolicy",
    "MediaRelay",
    "NgClient",
    "NgCore",
    "NgError",
    "NgProtocolError",
    "NgTimeout",
    "NoRelayAvailable",
    "RelayHealth",
    "RelayPool",
    "RetrySchedule",
    "RtpengineInstance",
    "UnknownRelay",
    "answer_params",
    "finish_sdp",
    "offer_params",
]
