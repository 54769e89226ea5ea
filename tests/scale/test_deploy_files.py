"""The deployment files say what tests/scale/test_two_nodes.py runs (Docker itself is not
available here): the same commands, variables and HAProxy configuration."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
# What the two-node test gives HAProxy (test_two_nodes._start_haproxy).
LB_VARIABLES = {"TIDEGATE_LB_BIND", "TIDEGATE_NODE1", "TIDEGATE_NODE2"}


def readme_variables() -> set[str]:
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(TIDEGATE_[A-Z0-9_]+)` \|", section, re.M))


def test_nodes_run_tidegate_serve_with_settings_the_server_reads():
    known = readme_variables()
    for name in ("node1", "node2"):
        node = SERVICES[name]
        command = node["command"]
        assert command[:2] == ["tidegate", "serve"]
        assert set(command[2::2]) <= {"--host", "--port", "--workers"}  # what Server.start passes, and where
        assert set(node["environment"]) <= known, set(node["environment"]) - known
        assert node["depends_on"]["init"]["condition"] == "service_completed_successfully"
        # Its own home (part cache, audit journal), no shared directory: data is in the bucket.
        assert node["volumes"] == [f"{name}-home:/var/lib/tidegate"]
        assert node["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    # Every node shares the pepper and the session key (or keys made on one fail on the other).
    env = SERVICES["node1"]["environment"]
    assert {"TIDEGATE_PEPPER", "TIDEGATE_SESSION_KEY", "TIDEGATE_REDIS_URL", "TIDEGATE_DATABASE_URL"} <= set(env)
    assert SERVICES["init"]["command"][:2] == ["tidegate", "init"]
    # The store as the test gives it (tests/s3.s3_env), pointing at MinIO, whose bucket is made.
    assert env["TIDEGATE_DATA_URL"].startswith("s3://tidegate/")
    assert env["TIDEGATE_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"TIDEGATE_S3_ACCESS_KEY_ID", "TIDEGATE_S3_SECRET_ACCESS_KEY"} <= set(env)
    assert "local/tidegate" in SERVICES["minio-bucket"]["command"][0]


def test_the_balancer_is_trusted_and_configured_as_in_the_test():
    haproxy = SERVICES["haproxy"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert set(haproxy["environment"]) == LB_VARIABLES
    assert set(re.findall(r"\$\{(\w+)\}", HAPROXY_CFG.read_text())) == LB_VARIABLES
    address = haproxy["networks"]["default"]["ipv4_address"]
    assert SERVICES["node1"]["environment"]["TIDEGATE_TRUSTED_PROXIES"] == address
    assert {"postgres", "redis", "minio", "haproxy", "node1", "node2"} <= set(SERVICES)


def test_the_haproxy_configuration_is_valid():
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        return  # (tests/scale/test_two_nodes.py reports haproxy missing)
    env = {"TIDEGATE_LB_BIND": "127.0.0.1:1", "TIDEGATE_NODE1": "127.0.0.1:2", "TIDEGATE_NODE2": "127.0.0.1:3"}
    checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_image_is_debian_and_runs_unprivileged():
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("python:3.11-slim-bookworm")
    users = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^CMD \["tidegate", "serve",', final_stage, re.M)
