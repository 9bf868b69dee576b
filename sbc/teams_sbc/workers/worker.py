"""One worker process: ``python -m teams_sbc.workers.worker``, started by the supervisor only.

It reads its config and :class:`~teams_sbc.workers.seat.Seat` from standard input, then runs the
same SBC as a single process does (``teams_sbc.app``), in its seat: every log line names it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import uvloop

from teams_sbc.app import serve
from teams_sbc.logs import setup_logging
from teams_sbc.workers.seat import SeatFilter, read_handshake


def main() -> int:
    config, seat = read_handshake()
    setup_logging(config.logging.level, config.logging.format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(SeatFilter(seat.index))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return uvloop.run(serve(config, seat, seat.config_path))
        return 0
    finally:
        # The supervisor removes the directory of the workers' sockets; if it was killed, the
        # last worker out does (each removed its own socket when it stopped serving).
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(seat.health_path))


if __name__ == "__main__":
    sys.exit(main())
