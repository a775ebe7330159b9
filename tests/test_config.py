"""Settings: embedded defaults, the documented file, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import Config, ConfigError, load_config

ROOT = Path(__file__).parent.parent


def test_defaults_need_no_file() -> None:
    config = load_config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.ice.servers == [] and config.codecs.video[0] == "VP8"


def test_repo_config_documents_exactly_the_defaults() -> None:
    assert load_config(ROOT / "config.yaml") == Config()


@pytest.mark.parametrize("data,key", [
    ({"server": {"prot": 1}}, "server.prot"),
    ({"server": {"port": "x"}}, "server.port"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"ice": {"servers": [{"urls": ["http://x"]}]}}, "ice.servers[0].urls"),
    ({"codecs": {"video": ["H265"]}}, "codecs.video[0]"),
    ({"forwarding": []}, "forwarding"),
])
def test_bad_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(data=data)


def test_serve_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: eighty\n")
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "server.port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags,key", [(["--port", "70000"], "server.port"), (["--port", "0"], "server.port"),
                                       (["--recordings-dir", ""], "recording.dir"), (["--host", ""], "server.host"),
                                       (["--workers", "-1"], "workers.count"), (["--origin", "ftp://x"], "origin.url")])
def test_serve_checks_command_line_overrides_too(flags: list[str], key: str) -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "serve", *flags],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr
