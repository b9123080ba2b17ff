"""The deployment compose file (docs/deployment/compose.yaml) passes yamllint and has the shape
docs/deployment.md describes: PostgreSQL, two API servers on it, a Ray head and its workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docs" / "deployment" / "compose.yaml"
LINT = "{extends: default, rules: {line-length: {max: 130}, document-start: disable}}"


def test_the_compose_file_passes_yamllint():
    r = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-d", LINT, str(COMPOSE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_servers_share_postgresql_and_the_ray_cluster():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"postgres", "ray-head", "ray-worker", "privtext-a", "privtext-b"} <= set(services)
    servers = [services["privtext-a"], services["privtext-b"]]
    for s in servers:
        cmd = s["command"]
        assert cmd[0] == "serve" and cmd[cmd.index("--store") + 1].startswith("postgresql://")
        assert cmd[cmd.index("--ray") + 1] == "ray-head:6379"
        assert s["environment"]["PRIVTEXT_CONFIG_DIR"] == "/config" and "./config:/config:ro" in s["volumes"]
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert servers[0]["volumes"][0] != servers[1]["volumes"][0]  # each server its own data dir (and lock)
    assert services["ray-worker"]["deploy"]["replicas"] >= 2
