"""Submitting to a real Ray head node: `gerne-ray submit` and `ray job submit`, token authentication on.

The head node is started by this module (`ray start --head --block` in a process group of its own,
on loopback, with its own ports and temp dir) and stopped by that group's id: nothing else on the
machine is touched.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gerne_ray import cli
from gerne_ray.errors import GerneError
from gerne_ray.spec import load_spec
from gerne_ray.submit import check_storage_for_cluster, spec_from_env

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for_port(port: int, proc: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {deadline_s} s")


@pytest.fixture(scope="module")
def head_node():
    """A Ray head node on 127.0.0.1 with token authentication; yields (job API address, env)."""
    ports = free_ports(9)
    gcs, dash, client, agent_grpc, agent_http, node_manager, object_manager, metrics, runtime_env = ports
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    token = Path(temp) / "token"  # this cluster's own token: ~/.ray is left alone
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
         f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         "--num-cpus=4", f"--temp-dir={temp}", "--object-store-memory=300000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(dash, head, 120)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the group ray start leads: only what this fixture started
        try:  # `ray start --block` takes up to half a minute to stop its processes one by one
            head.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def results_of(run_dir: Path) -> tuple[dict, list]:
    import pandas as pd

    best = json.loads((run_dir / "best.json").read_text())
    return best, pd.read_parquet(run_dir / "trials.parquet").status.tolist()


def test_gerne_ray_submit_waits_for_a_real_job(head_node, tmp_path):
    address, env = head_node
    storage = tmp_path / "shared"
    proc = subprocess.run(
        [str(BIN / "gerne-ray"), "submit", "jobs/quick_search.yaml", "--address", address, "--wait",
         "--set", f"storage.path={storage}", "--set", "name=submitted", "--set", "search.num_samples=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted job submitted-" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert "best trial" in proc.stdout  # the job's logs, followed
    best, statuses = results_of(storage / "submitted")
    assert best["name"] == "submitted" and len(statuses) == 2
    secret = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()  # never in what we print or write
    assert secret not in proc.stdout + proc.stderr
    written = [p for p in (storage / "submitted").rglob("*") if p.is_file()]
    assert written and all(secret.encode() not in p.read_bytes() for p in written)


def test_ray_job_submit_runs_the_tune_command(head_node, tmp_path):
    address, env = head_node
    storage = tmp_path / "shared"
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "gerne-ray", "tune", "jobs/quick_search.yaml", "--set", f"storage.path={storage}",
         "--set", "search.num_samples=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best, statuses = results_of(storage / "quick-search")
    assert best["name"] == "quick-search" and len(statuses) == 2


def test_a_job_without_the_token_is_refused(head_node, tmp_path, capsys):
    address, env = head_node
    no_token = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token")
    no_token.pop("RAY_AUTH_TOKEN_PATH")
    proc = subprocess.run(
        [str(BIN / "gerne-ray"), "submit", "jobs/quick_search.yaml", "--address", address,
         "--set", f"storage.path={tmp_path}"],
        cwd=ROOT, env=no_token, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--address" in proc.stderr and "not-the-token" not in proc.stderr + proc.stdout


def test_submit_refuses_a_relative_storage_path_and_needs_an_address(tmp_path, capsys, monkeypatch):
    with pytest.raises(GerneError, match="storage.path: 'runs' is relative"):
        check_storage_for_cluster(load_spec(ROOT / "jobs" / "quick_search.yaml"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["submit", str(ROOT / "jobs" / "quick_search.yaml"),
                     "--set", f"storage.path={tmp_path}"]) == 2
    assert "--address: give the cluster's job API address" in capsys.readouterr().err


def test_the_spec_travels_as_json_in_the_environment(monkeypatch):
    spec = load_spec(ROOT / "jobs" / "quick_search.yaml")
    monkeypatch.setenv("GERNE_RAY_SPEC", json.dumps(spec.model_dump(mode="json")))
    assert load_spec(spec_from_env("GERNE_RAY_SPEC")) == spec
    monkeypatch.setenv("GERNE_RAY_SPEC", "[1, 2")
    with pytest.raises(GerneError, match="not valid JSON"):
        spec_from_env("GERNE_RAY_SPEC")
    with pytest.raises(GerneError, match="NOPE is not set"):
        spec_from_env("NOPE")
