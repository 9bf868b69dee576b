"""pytest fixtures for the test bed's Debian-packaged parts: sipp, rtpengine, named, Kamailio.

All are function-scoped: each test gets fresh processes on fresh ports, and every part a test
started is stopped when it ends, whatever the outcome. A part that cannot start raises
:class:`~tests.testbed.process.PartFailed` (with its log), which fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.dns import DnsServer
from tests.testbed.kamailio import Kamailio
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sipp import SippFactory


def _log_dir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, part: str
) -> Path:
    """A fresh directory per test and part, named after both for reading logs afterwards."""
    safe = re.sub(r"[^\w.-]+", "_", f"{part}-{request.node.name}")[:60]
    return tmp_path_factory.mktemp(safe, numbered=True)


@pytest.fixture
def sipp_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[SippFactory]:
    """``sipp_factory.uas(transport="u1")`` starts a UAS; ``sipp_factory.uac(uas.address)`` runs
    calls to completion and returns sipp's statistics."""
    factory = SippFactory(_log_dir(tmp_path_factory, request, "sipp"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def rtpengine_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Rtpengine]]:
    """Starts rtpengine daemons (keyword arguments go to :class:`Rtpengine`)."""
    started: list[Rtpengine] = []

    def start(**kwargs: Any) -> Rtpengine:
        name = f"rtpengine-{len(started) + 1}"
        engine = Rtpengine(_log_dir(tmp_path_factory, request, name), name=name, **kwargs)
        started.append(engine)
        return engine.start()

    try:
        yield start
    finally:
        for engine in reversed(started):
            engine.stop()


@pytest.fixture
def rtpengine(rtpengine_factory: Callable[..., Rtpengine]) -> Rtpengine:
    """One running rtpengine with a 20-port RTP range on 127.0.0.1."""
    return rtpengine_factory()


@pytest.fixture
def dns_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[DnsServer]:
    """named, authoritative for ``sbc.test.`` (holding ``keep.sbc.test. A 192.0.2.99``), taking
    updates signed with ``dns_server.key`` (hmac-sha256)."""
    server = DnsServer(_log_dir(tmp_path_factory, request, "named"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def kamailio_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Kamailio]]:
    """``kamailio_factory(uas_port=uas.port)`` starts the benchmark proxy in front of that UAS."""
    started: list[Kamailio] = []

    def start(uas_port: int, **kwargs: Any) -> Kamailio:
        name = f"kamailio-{len(started) + 1}"
        workdir = _log_dir(tmp_path_factory, request, name)
        proxy = Kamailio(workdir, uas_port, name=name, **kwargs)
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in reversed(started):
            proxy.stop()
