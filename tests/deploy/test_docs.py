"""docs/deploy.md's systemd unit starts and stops Relay as systemd would, and its port table
matches the settings it shows. (Its other snippets run in test_tls, test_turn and test_nginx.)"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from ..conftest import free_port
from .conftest import DEPLOY_DOC, doc_config, doc_snippet

ROOT = Path(__file__).resolve().parents[2]


def test_the_systemd_unit_serves_and_stops_within_its_timeout(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(doc_snippet("systemd"))
    service = unit["Service"]
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc_config("config", {"port: 8080": f"port: {port}"})))
    command = shlex.split(service["ExecStart"].replace("/etc/relay/config.yaml", str(config)))
    assert command[0] == "/opt/relay/.venv/bin/relay"
    process = subprocess.Popen([sys.executable, "-m", "relay", *command[1:]], cwd=tmp_path,  # WorkingDirectory
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=1) as response:
                    assert response.status == 200
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "relay did not start"
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)  # systemctl stop
        assert process.wait(float(service["TimeoutStopSec"])) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_port_table_matches_the_settings() -> None:
    table = DEPLOY_DOC.read_text().split("## Ports to open", 1)[1].split("##", 1)[0]
    low, high = doc_config("config")["ice"]["port_range"]
    turn = dict(re.findall(r"^(min-port|max-port)=(\d+)$", doc_snippet("turnserver"), re.M))
    assert f"| {low}-{high} | UDP |" in table
    assert f"| {turn['min-port']}-{turn['max-port']} | UDP |" in table
    assert "| 3478 | UDP |" in table and "listening-port=3478" in doc_snippet("turnserver")
