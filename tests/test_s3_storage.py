"""storage.path on S3 for real, and storage URIs that would leak credentials or lose the run name.

The S3 test starts an S3 server on 127.0.0.1 (moto's, in a thread of this process) and points the
real `gerne-ray` command at it the way a user points it at MinIO: AWS_ENDPOINT_URL, credentials in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. A search is interrupted, resumed by another process
with an empty local cache (another machine) and reported by a third; the files are read back from
the bucket. The drivers connect to a Ray cluster the test starts, whose nodes hold credentials (as
nodes with an instance role do; the session cluster's workers were started without any) but not
the endpoint: the trials reach the server only through the settings gerne-ray hands on to them.
"""

import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from gerne_ray import cli
from gerne_ray.errors import GerneError
from gerne_ray.spec import load_spec
from gerne_ray.storage import STORAGE_SETTINGS, RunFolder, storage_settings, uri_problem
from gerne_ray.training import train

CLI = [str(Path(sys.executable).parent / "gerne-ray")]  # the console script pip installed
BUCKET = "gerne-test"
ACCESS_KEY = "AKIAGERNETESTKEY0001"
SECRET_KEY = "gerne/test+Secret0123456789abcdefSECRET"  # AWS secret keys may hold '/' and '+'
SMALL = {
    "name": "s3search",
    "data": {"dataset": "colored_digits"},
    "model": {"arch": "mlp", "hidden": 16},
    "method": {"name": "gerne", "c": 0.5, "beta": 0.5},
    # 4 epochs: the second trial is still training when the first one's line interrupts the driver
    "optim": {"epochs": 4, "batch_size_per_class": 16},
    "search": {"num_samples": 2, "max_concurrent": 1, "scheduler": "fifo"},
    "storage": {"path": f"s3://{BUCKET}/runs"},
}
OWN_FILES = {"spec.json", "optuna.journal", "trials.parquet", "trial_histories.parquet", "best.json",
             "report.md", "report.html"}  # and plots/: what the package writes through its local mirror


# ---- credentials and query strings in a storage URI (no server needed) --------------------------

SECRET_URIS = [
    f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/runs",
    f"s3://{SECRET_KEY}@{BUCKET}/runs",
    f"s3://{BUCKET}/runs?access_key={ACCESS_KEY}&secret_key={SECRET_KEY}",
    f"s3://{BUCKET}/runs?region=eu-west-1&session_token={SECRET_KEY}",
    f"gs://{BUCKET}/runs?access_token={SECRET_KEY}",
]


@pytest.mark.parametrize("uri", SECRET_URIS)
def test_credentials_in_a_storage_uri_are_refused_without_echoing_them(tmp_path, capsys, monkeypatch, uri):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GerneError, match=r"^spec: storage.path: .*credentials.*AWS_SECRET_ACCESS_KEY") as err:
        load_spec({**SMALL, "storage": {"path": uri}})
    assert SECRET_KEY not in str(err.value)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SMALL, "storage": {"path": uri}}))
    for argv in (["validate", str(spec)], ["train", str(spec)], ["tune", str(spec)],
                 ["validate", str(spec), "--set", f"storage.path={uri}"],
                 ["resume", f"{uri}/s3search"], ["report", f"{uri}/s3search"]):
        assert cli.main(argv) == 2, argv
        out, stderr = capsys.readouterr()
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert "credentials" in stderr and "~/.aws/credentials" in stderr, stderr
        assert SECRET_KEY not in stderr + out and ACCESS_KEY not in stderr + out, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json"]  # no run folder, no log


def test_a_query_string_is_refused_rather_than_losing_the_run_name(tmp_path, monkeypatch):
    """pyarrow reads `?...` as options and drops it from the path: the run folder was the bucket root."""
    monkeypatch.setenv("GERNE_RAY_CACHE", str(tmp_path / "cache"))
    uri = f"file://{tmp_path}/shared?region=eu-west-1"
    import pyarrow.fs

    assert pyarrow.fs.FileSystem.from_uri(f"{uri}/stored")[1] == f"{tmp_path}/shared"  # what went wrong
    refused = r"^spec: storage.path: a query string .* AWS_REGION .* AWS_ENDPOINT_URL"
    with pytest.raises(GerneError, match=refused):
        train({**SMALL, "name": "stored", "storage": {"path": uri}, "optim": {"epochs": 1}})
    for location in (uri, f"file://{tmp_path}/shared#frag", "s3://bucket/runs?endpoint_override=localhost:9000"):
        with pytest.raises(GerneError, match="storage.path: a query string or fragment"):
            RunFolder(location, "stored")
    assert not (tmp_path / "shared").exists() and not (tmp_path / "cache").exists()
    # an '@' inside a local path, or a file:// path, is a folder name, not a user
    assert uri_problem(f"file://{tmp_path}/a@b") is None and uri_problem(str(tmp_path / "a@b?c")) is None


def test_only_endpoint_and_region_are_passed_on(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, f"value-of-{name}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET_KEY)
    settings = storage_settings()
    assert settings == {name: f"value-of-{name}" for name in STORAGE_SETTINGS}
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{ACCESS_KEY}:{SECRET_KEY}@minio:9000")
    assert "AWS_ENDPOINT_URL" not in storage_settings()  # an endpoint written with credentials stays home
    assert SECRET_KEY not in json.dumps(storage_settings())


# ---- a search on an S3 server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 server on 127.0.0.1 (moto) with an empty bucket; stopped at the end of the module."""
    server_module = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install -e '.[dev]'): the S3 storage "
                              "test needs its local S3 server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    requests = logging.getLogger("werkzeug")  # the server logs every request at INFO
    level = requests.level
    requests.setLevel(logging.WARNING)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _s3(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()
        requests.setLevel(level)


def _s3(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def _objects(endpoint: str, prefix: str) -> dict[str, str]:
    """Every object under prefix in the bucket: key -> ETag."""
    pages = _s3(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _read(endpoint: str, key: str) -> bytes:
    return _s3(endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _shell(root: Path, machine: str, **settings: str) -> dict:
    """A process on one machine: its own home and cache, and only these AWS and Ray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "GERNE_RAY_"))}
    env.update(HOME=str(root / machine / "home"), GERNE_RAY_CACHE=str(root / machine / "cache"),
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **settings)
    for folder in ("home", "work"):
        (root / machine / folder).mkdir(parents=True, exist_ok=True)
    return env


def _stop(proc: subprocess.Popen) -> None:
    """End the process group this test started (the process and whatever it left behind)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


# A Ray cluster whose nodes hold S3 credentials (as nodes with an instance role do) but not the endpoint:
# the trials find the S3 server only through the settings gerne-ray hands on from the driver.
CLUSTER = """
import sys, ray
ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
         logging_level="WARNING")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


@pytest.fixture
def s3_cluster(s3_endpoint, tmp_path):
    """A local Ray cluster for the S3 test's drivers: yields the settings that connect a driver to it."""
    token = tmp_path / "cluster" / "token"  # its own token: ~/.ray is left alone
    token.parent.mkdir()
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = _shell(tmp_path, "cluster", AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, **auth)
    log = (tmp_path / "cluster" / "log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER], env=env, cwd=tmp_path / "cluster" / "work",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 180)  # Ray prints its address once it runs
        address = proc.stdout.readline().strip() if ready else ""
        assert address, f"no Ray cluster after 180 s: {(tmp_path / 'cluster' / 'log').read_text()[-3000:]}"
        yield {"RAY_ADDRESS": address, **auth}
        proc.stdin.close()  # ray.shutdown(), then the process ends
        proc.wait(timeout=60)
    finally:
        _stop(proc)
        log.close()


def _run(argv: list[str], env: dict, cwd: Path, interrupt_after: str | None = None) -> tuple[int, str]:
    """Run the CLI to its end (or SIGINT it once a line holds `interrupt_after`); its exit code and output.

    It runs in its own process group, ended afterwards, and is killed if it runs past 300 s.
    """
    proc = subprocess.Popen([*CLI, *argv], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    watchdog = threading.Timer(300, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if interrupt_after and interrupt_after in line:
                proc.send_signal(signal.SIGINT)
                interrupt_after = None
        rc = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        _stop(proc)
    return rc, "".join(lines)


def test_search_on_s3_is_resumed_and_reported_from_other_processes(s3_endpoint, s3_cluster, tmp_path):
    start = time.perf_counter()
    prefix = "runs/s3search/"
    location = f"s3://{BUCKET}/runs/s3search"
    user = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_REGION": "us-east-1",  # how a user points it at MinIO
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    env = _shell(tmp_path, "first", **user, **s3_cluster)
    spec = tmp_path / "first" / "work" / "spec.json"
    spec.write_text(json.dumps(SMALL))

    # 1. the search, interrupted (Ctrl+C) once the first trial has finished: Tune saves its state
    rc, out = _run(["tune", str(spec)], env, spec.parent, interrupt_after="  trial   1/2")
    outputs = [out]
    print(f"interrupted search: {time.perf_counter() - start:.0f} s")
    assert rc == 2 and "search: interrupted with 1 of 2 trials finished" in out, out[-3000:]
    assert f"results in {location}" in out
    stored = _objects(s3_endpoint, prefix)
    names = {k.removeprefix(prefix) for k in stored}
    assert {"spec.json", "optuna.journal"} <= names, sorted(names)
    assert any(n.startswith("experiment_state-") for n in names), sorted(names)
    assert not names & {"trials.parquet", "best.json", "report.md"}
    first_trial = out.split("  trial   1/2 ")[1].split()[0]
    done_before = {k: tag for k, tag in stored.items() if k.startswith(f"{prefix}{first_trial}/checkpoint_")}
    assert done_before, sorted(names)

    # 2. another machine (an empty cache, another home) resumes it from the URI alone
    rc, out = _run(["resume", location], _shell(tmp_path, "second", **user, **s3_cluster),
                   tmp_path / "second" / "work")
    outputs.append(out)
    print(f"resumed: {time.perf_counter() - start:.0f} s")
    assert rc == 0 and "  trial   2/2" in out and "best trial" in out, out[-3000:]
    assert f"results in {location}/" in out
    stored = _objects(s3_endpoint, prefix)
    for name in ("trials.parquet", "trial_histories.parquet", "best.json", "report.md", "spec.json",
                 "optuna.journal", "plots/metric_vs_beta.png"):
        assert f"{prefix}{name}" in stored, name
    # the trial finished before the interrupt was not trained again: its checkpoints are untouched
    assert {k: tag for k, tag in stored.items() if k in done_before} == done_before
    import io

    trials = pd.read_parquet(io.BytesIO(_read(s3_endpoint, f"{prefix}trials.parquet")))
    assert len(trials) == 2 and set(trials.status) == {"completed"} and first_trial in set(trials.trial_id)
    history = pd.read_parquet(io.BytesIO(_read(s3_endpoint, f"{prefix}trial_histories.parquet")))
    assert sorted(history.groupby("trial_id").epoch.apply(list).tolist()) == [[1, 2, 3, 4]] * 2
    best = json.loads(_read(s3_endpoint, f"{prefix}best.json"))
    assert best["name"] == "s3search" and best["search"]["trials"] == 2

    # 3. a third machine renders the report again from the bucket
    _s3(s3_endpoint).delete_object(Bucket=BUCKET, Key=f"{prefix}report.md")
    rc, out = _run(["report", location], _shell(tmp_path, "third", **user), tmp_path / "third" / "work")
    outputs.append(out)
    assert rc == 0 and out.strip().splitlines()[-1] == f"{location}/report.md", out[-3000:]
    report = _read(s3_endpoint, f"{prefix}report.md").decode()
    assert "s3search" in report

    # nothing of the run was written locally but the package's own files in each cache's mirror
    assert not (tmp_path / "cluster" / "home" / "ray_results").exists()
    assert not list((tmp_path / "cluster" / "work").iterdir())
    for machine in ("first", "second", "third"):
        root = tmp_path / machine
        assert not (root / "home" / "ray_results").exists()
        work = sorted(p.name for p in (root / "work").iterdir())
        assert work == (["spec.json"] if machine == "first" else []), work
        mirror = [p for p in (root / "cache").rglob("*") if p.is_file()]
        assert mirror, machine
        for path in mirror:
            own = path.parent.name == "s3search" and path.name in OWN_FILES
            assert own or path.parent.name == "plots", path
    # the credentials went nowhere: not in the output, not in any object (Tune's pickles included)
    assert not any(SECRET_KEY in o or ACCESS_KEY in o for o in outputs)
    for key in _objects(s3_endpoint, ""):
        body = _read(s3_endpoint, key)
        assert SECRET_KEY.encode() not in body and ACCESS_KEY.encode() not in body, key
    print(f"S3 search, resume and report: {time.perf_counter() - start:.0f} s")
