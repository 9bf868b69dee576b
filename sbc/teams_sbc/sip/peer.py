"""Where a message comes from or goes to, as the sans-IO core sees it (no sockets here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Peer:
    """The far end of a message: transport (udp, tcp, tls), IP address and port."""

    transport: str
    host: str
    port: int
    #: For TLS: the name to send as SNI and to check the peer's certificate against (the
    #: next hop's host name, while ``host`` is the address it resolved to). Not part of identity.
    server_name: str | None = field(default=None, compare=False)

    @property
    def reliable(self) -> bool:
        """TCP and TLS retransmit for us: RFC 3261 17 sets timers A, E, G only for UDP."""
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


class Outgoing:
    """One message the core wants sent: bytes, destination, and the listener to send it from.

    ``owner`` is the core's handle on whoever must hear of a failure to send (a transaction);
    the transport hands the whole ``Outgoing`` back to the core when sending fails. A plain
    slotted class, not a frozen dataclass: the core makes seven of these per call, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``.
    """

    __slots__ = ("data", "listener", "owner", "peer")

    def __init__(self, data: bytes, peer: Peer, listener: str, owner: object = None) -> None:
        self.data = data
        self.peer = peer
        self.listener = listener
        self.owner = owner

    def __repr__(self) -> str:
        return f"Outgoing({len(self.data)} bytes to {self.peer} from {self.listener})"
