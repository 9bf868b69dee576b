"""Render docs/emulator-config.md from the emulator's config schema, so it cannot drift.

``python -m teams_sbc.emulator.config_doc > docs/emulator-config.md``; a test fails when the
file is out of date.
"""

from __future__ import annotations

from teams_sbc.config_doc import _section
from teams_sbc.emulator.config import EmulatorConfig

HEADER = """# The Teams emulator's config file

`teams-sbc emulate-teams --config FILE` reads one YAML file (flags override it); the Python API
and the pytest fixture take the same model (`teams_sbc.emulator.EmulatorConfig`). Unknown keys
are errors. What the emulator does with each setting is in docs/emulator.md. This page is
generated from `sbc/teams_sbc/emulator/config.py` by `python -m teams_sbc.emulator.config_doc`;
do not edit it by hand.
"""


def render() -> str:
    out = [HEADER]
    _section(EmulatorConfig, "(top level)", out, {EmulatorConfig.__name__})
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
