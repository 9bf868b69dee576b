"""A strict Microsoft Teams Direct Routing emulator: Microsoft's SIP proxies (sip, sip2, sip3)
and the Teams users behind them, as fussy as Microsoft, for tests, the demo and carriers
checking their own set-ups (``teams-sbc emulate-teams``; docs/emulator.md).

Public API:

- :class:`EmulatorConfig` (and :class:`ProxyConfig`, :class:`UserConfig`, :class:`Timing`,
  :class:`MediaSettings`): what it plays; :func:`load_emulator_config` reads YAML.
- :class:`TeamsEmulator`: the asyncio emulator (``await start()``, ``place_call``, ``hold``,
  ``hangup``, ``set_failure``, ``call``, ``summary``, ``wait_call``...);
  :class:`EmulatorThread`: the same on a background thread with blocking methods.
- :class:`CallOptions`: how it places a call. :class:`CallRecord` (with its ladder of
  :class:`LadderEntry` and its :class:`MediaStats`), :class:`OptionsResult`,
  :class:`ProxyStats`: what it reports.
- :func:`pattern_payload`, :func:`is_pattern`: the media test pattern, to check the other side.
- :class:`EmulatorCore`: the sans-IO SIP logic underneath, for tests on a virtual clock.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teams_sbc.emulator.config import (
        EmulatorConfig,
        EmulatorConfigError,
        MediaSettings,
        ProxyConfig,
        Timing,
        UserConfig,
        load_emulator_config,
        parse_emulator_config,
    )
    from teams_sbc.emulator.core import CallOptions, EmulatorCore, MediaPlan, MediaStop, Out, Target
    from teams_sbc.emulator.identity import Identity, name_matches
    from teams_sbc.emulator.media import is_pattern, pattern_payload
    from teams_sbc.emulator.records import (
        CallRecord,
        LadderEntry,
        MediaStats,
        OptionsResult,
        ProxyStats,
        as_dict,
    )
    from teams_sbc.emulator.rules import Rejection
    from teams_sbc.emulator.server import FINAL_STATES, EmulatorThread, TeamsEmulator

#: Where each public name lives; loaded on first use, so ``teams-sbc`` starts fast.
_WHERE = {
    "CallOptions": "teams_sbc.emulator.core",
    "CallRecord": "teams_sbc.emulator.records",
    "EmulatorConfig": "teams_sbc.emulator.config",
    "EmulatorConfigError": "teams_sbc.emulator.config",
    "EmulatorCore": "teams_sbc.emulator.core",
    "EmulatorThread": "teams_sbc.emulator.server",
    "FINAL_STATES": "teams_sbc.emulator.server",
    "Identity": "teams_sbc.emulator.identity",
    "LadderEntry": "teams_sbc.emulator.records",
    "MediaPlan": "teams_sbc.emulator.core",
    "MediaSettings": "teams_sbc.emulator.config",
    "MediaStats": "teams_sbc.emulator.records",
    "MediaStop": "teams_sbc.emulator.core",
    "OptionsResult": "teams_sbc.emulator.records",
    "Out": "teams_sbc.emulator.core",
    "ProxyConfig": "teams_sbc.emulator.config",
    "ProxyStats": "teams_sbc.emulator.records",
    "Rejection": "teams_sbc.emulator.rules",
    "Target": "teams_sbc.emulator.core",
    "TeamsEmulator": "teams_sbc.emulator.server",
    "Timing": "teams_sbc.emulator.config",
    "UserConfig": "teams_sbc.emulator.config",
    "as_dict": "teams_sbc.emulator.records",
    "is_pattern": "teams_sbc.emulator.media",
    "load_emulator_config": "teams_sbc.emulator.config",
    "name_matches": "teams_sbc.emulator.identity",
    "parse_emulator_config": "teams_sbc.emulator.config",
    "pattern_payload": "teams_sbc.emulator.media",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FINAL_STATES",
    "CallOptions",
    "CallRecord",
    "EmulatorConfig",
    "EmulatorConfigError",
    "EmulatorCore",
    "EmulatorThread",
    "Identity",
    "LadderEntry",
    "MediaPlan",
    "MediaSettings",
    "MediaStats",
    "MediaStop",
    "OptionsResult",
    "Out",
    "ProxyConfig",
    "ProxyStats",
    "Rejection",
    "Target",
    "TeamsEmulator",
    "Timing",
    "UserConfig",
    "as_dict",
    "is_pattern",
    "load_emulator_config",
    "name_matches",
    "parse_emulator_config",
    "pattern_payload",
]
