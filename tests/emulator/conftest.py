"""Shared set-up of the emulator tests: an emulator and the SBC's TLS server on one event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from teams_sbc.emulator import TeamsEmulator
from teams_sbc.pki import CertFiles
from tests.emulator.peers import SBC_FQDN, TestSbc
from tests.testbed.teams_emulator import EmulatorFactory


@contextlib.asynccontextmanager
async def emulator_and_sbc(
    factory: EmulatorFactory,
    *,
    sbc_cert: CertFiles | None = None,
    sbc_kwargs: dict[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[TeamsEmulator, TestSbc]]:
    """The emulator (trunk sbc.example.test, resolved to the test SBC) and the test SBC."""
    pki = factory.pki
    sbc = await TestSbc(pki.ca_file, sbc_cert or pki.sbc_cert(SBC_FQDN),
                        **(sbc_kwargs or {})).start()
    config.setdefault("trunks", [SBC_FQDN])
    config.setdefault("sbc_address", sbc.address)
    emulator = TeamsEmulator(factory.config(**config))
    await emulator.start()
    try:
        yield emulator, sbc
    finally:
        await emulator.stop()
        await sbc.close()
