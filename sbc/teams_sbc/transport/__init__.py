"""The thin asyncio layer under the sans-IO core: UDP, TCP (and TLS) sockets on uvloop.

It frames stream bytes into messages, hands every message to one callback with where it came
from, and sends what the core returns: over the listener's UDP socket, over the connection a
request arrived on (RFC 3261 18.2.2), or over a pooled outbound connection.
"""

from teams_sbc.sip.peer import Peer
from teams_sbc.transport.layer import TransportLayer

__all__ = ["Peer", "TransportLayer"]
