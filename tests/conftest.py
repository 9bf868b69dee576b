"""Test-wide fixtures: the real test bed's parts are plugins under tests/testbed/."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.testbed import process

pytest_plugins = [
    "tests.testbed.fixtures_debian",
    "tests.testbed.fixtures_kube",
    "tests.testbed.fixtures_sbc",
    "tests.testbed.teams_emulator",
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    """On a failure, attach the log of every test-bed part still running to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in list(process.RUNNING):
            report.sections.append((f"log of {proc.name}", proc.log_tail(200)))
