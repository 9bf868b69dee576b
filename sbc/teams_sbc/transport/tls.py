"""TLS contexts for SIP over TLS, server and client side, reloadable from disk.

One context pair per TLS listener. :meth:`TlsContexts.reload_if_changed` re-reads the
certificate, key and trust bundle when their files change: the same ``SSLContext`` objects load
the new material, so new handshakes get it while established connections (calls) go on.
"""

from __future__ import annotations

import logging
import os
import ssl

from teams_sbc.config import Tls

log = logging.getLogger("teams_sbc.tls")


def _base(purpose: int, settings: Tls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if settings.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(settings.ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


class TlsContexts:
    """The server and client contexts of one TLS listener."""

    def __init__(self, settings: Tls) -> None:
        self.settings = settings
        self.server = _base(ssl.PROTOCOL_TLS_SERVER, settings)
        self.client = _base(ssl.PROTOCOL_TLS_CLIENT, settings)
        if settings.verify_peer:
            self.server.verify_mode = ssl.CERT_REQUIRED
        else:
            self.client.check_hostname = False
            self.client.verify_mode = ssl.CERT_NONE
        self._stamp: tuple[float, ...] = ()
        self.load()

    def _files(self) -> list[str]:
        s = self.settings
        return [f for f in (s.cert_file, s.key_file, s.ca_file) if f]

    def load(self) -> None:
        """(Re)load certificate, key and trust bundle into both contexts."""
        s = self.settings
        for ctx in (self.server, self.client):
            # The client side presents the same certificate: Microsoft demands mutual TLS.
            ctx.load_cert_chain(s.cert_file, s.key_file)
            if s.ca_file:
                ctx.load_verify_locations(cafile=s.ca_file)
        self._stamp = tuple(os.stat(f).st_mtime_ns for f in self._files())

    def reload_if_changed(self) -> bool:
        """Reload when a file changed on disk; a broken new file keeps the old material."""
        try:
            stamp = tuple(os.stat(f).st_mtime_ns for f in self._files())
        except OSError as exc:
            log.warning("cannot stat TLS files: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            self.load()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS reload failed, keeping the previous certificate: %s", exc)
            self._stamp = stamp  # do not retry every tick on the same broken files
            return False
        log.info("TLS certificate reloaded", extra={"cert_file": self.settings.cert_file})
        return True
