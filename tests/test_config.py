"""The config file: the example is valid, bad files are refused with a message naming the key,
and docs/config.md is the schema's own rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from teams_sbc.config import ConfigError, load_config, parse_config
from teams_sbc.config_doc import render

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "examples" / "sbc.yaml")
    assert {listener.name for listener in config.listeners} == {"carrier-udp", "carrier-tcp"}
    assert config.timers.t1_ms == 500


def test_unknown_key_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"listeners\.0\.prot: Extra inputs"):
        parse_config(
            {
                "listeners": [
                    {"name": "a", "transport": "udp", "host": "127.0.0.1", "port": 5060, "prot": 1}
                ]
            }
        )


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="transport"):
        parse_config(
            {"listeners": [{"name": "a", "transport": "sctp", "host": "127.0.0.1", "port": 5060}]}
        )
    with pytest.raises(ConfigError, match="must be an IP address"):
        parse_config(
            {"listeners": [{"name": "a", "transport": "udp", "host": "example.com", "port": 5060}]}
        )
    with pytest.raises(ConfigError, match="unknown listeners"):
        parse_config(
            {
                "listeners": [{"name": "a", "transport": "udp", "host": "127.0.0.1", "port": 5060}],
                "routes": [{"name": "r", "next_hop": "sip:127.0.0.1", "listener": "b"}],
            }
        )


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_docs_config_md_is_up_to_date() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == render(), (
        "docs/config.md is stale: run `uv run python -m teams_sbc.config_doc > docs/config.md`"
    )
