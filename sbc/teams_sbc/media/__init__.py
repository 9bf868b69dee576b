"""The media layer: rtpengine anchors every call's media, RTP towards the carrier and SRTP
(SDES) towards Teams; this package is the SBC's side of that partnership.

- :mod:`.ng`: the ng control protocol (sans-IO :class:`~.ng.NgCore`, asyncio
  :class:`~.ng.NgClient`).
- :mod:`.relays`: several rtpengine instances, the selector, stickiness tokens, health.
- :mod:`.commands`: what the sans-IO SIP core asks of rtpengine (:class:`MediaCommand`) and
  what it gets back (:class:`MediaResult`).
- :mod:`.driver`: runs those commands on the relays for the SBC process, and takes rtpengine's
  media-timeout callback.
- :mod:`.legs`: the ng flags per leg and the SDP edits after rtpengine (hold as inactive).
- :mod:`.sdp`, :mod:`.rtp`, :mod:`.srtp`: SDP reading and rewriting, RTP packets, SDES keys
  and SRTP (libsrtp2) for the Teams emulator, the demo and the tests.
- :mod:`.config`: the ``media`` section of the config file (:class:`MediaConfig`).

Only the modules free of I/O are imported here: the SIP core imports this package, and must not
pull asyncio in with it. Import :mod:`.ng`, :mod:`.relays` and :mod:`.driver` by their names.
See docs/media.md.
"""

from teams_sbc.media.commands import Failure, MediaCommand, MediaResult, Op
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

__all__ = [
    "Failure",
    "Leg",
    "MediaCommand",
    "MediaConfig",
    "MediaError",
    "MediaPolicy",
    "MediaResult",
    "NgError",
    "NgProtocolError",
    "NgTimeout",
    "NoRelayAvailable",
    "Op",
    "RtpengineInstance",
    "UnknownRelay",
    "answer_params",
    "finish_sdp",
    "offer_params",
]
