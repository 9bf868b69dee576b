"""pytest fixture for teams-sbc itself, run as the real ``teams-sbc run --config FILE``.

Function-scoped like the other parts: each test gets fresh SBC processes on fresh ports, stopped
when it ends whatever the outcome. One that does not become ready fails the test with its log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.testbed.sbc import SbcFactory


@pytest.fixture
def sbc_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[SbcFactory]:
    """``sbc_factory(routes=[{"name": "uas", "next_hop": "sip:127.0.0.1:5080"}])`` starts an SBC
    with a UDP and a TCP listener (``sbc.address("udp")``) and the test timers
    (:data:`tests.testbed.sbc.TEST_TIMERS`); ``listeners=[...]`` and any other top-level config
    key can be given in the config file's own words."""
    safe = re.sub(r"[^\w.-]+", "_", f"sbc-{request.node.name}")[:60]
    factory = SbcFactory(tmp_path_factory.mktemp(safe, numbered=True))
    try:
        yield factory
    finally:
        factory.stop_all()
