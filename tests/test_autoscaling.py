"""A multi-node Ray cluster on one machine: the autoscaler starts worker nodes for trials and removes them.

Ray's fake multi-node node provider (the one Ray tests its autoscaler with) makes each node the
autoscaler launches a raylet with its own processes on this machine, sharing its file system. The
head has no CPU, so every trial needs a worker node. Each scenario runs `gerne-ray tune` as a driver
process connected to the cluster through RAY_ADDRESS, as a user would on a real one; this process
never connects to it, so the session cluster of the other tests (conftest.ray_cluster) is untouched.

Not `ray.cluster_utils.AutoscalingCluster` itself: its start() and shutdown() run `ray stop --force`,
which ends every Ray instance on the machine; its config template (fake_multi_node/example.yaml) is
missing from the 2.60 wheel; and a head started in the default temp dir writes
/tmp/ray/ray_current_cluster, after which a plain `ray.init()` anywhere on the machine joins this
cluster instead of starting its own. The fixture does the same as AutoscalingCluster with its own temp
dir, ports and process tree, and ends only the processes it started.
"""

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest

from gerne_ray.errors import GerneError
from gerne_ray.loop import load_state

pytestmark = pytest.mark.cluster

NODE_TYPE = "cpu2"
NODE_CPUS = 2
MAX_NODES = 3
START_TIMEOUT_S = 180
START_ATTEMPTS = 3
RUN_TIMEOUT_S = 420
BASE = {
    "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
    "model": {"arch": "mlp", "hidden": 32},
    "method": {"name": "gerne", "c": 0.5},
    "optim": {"epochs": 2, "batch_size_per_class": 16, "lr": 0.1, "weight_decay": 5e-4},
    "search": {"num_samples": 2, "max_concurrent": 2, "scheduler": "fifo"},
    "scaling": {"cpus_per_worker": NODE_CPUS},  # one in-process trial fills a worker node
}
# what ray.nodes() says, from a driver of its own (this process stays on the session cluster)
NODES_PROBE = ("import json, ray; ray.init(logging_level='ERROR'); print(json.dumps({n['NodeID']: "
               "{'alive': n['Alive'], 'cpus': n['Resources'].get('CPU', 0)} for n in ray.nodes()}))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def autoscaling_config(gcs_address: str) -> dict:
    """AutoscalingCluster's config: Ray's fake_multi_node/example.yaml with our node types."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": MAX_NODES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            NODE_TYPE: {"resources": {"CPU": NODE_CPUS, "object_store_memory": 100 * 1024**2},
                        "node_config": {}, "min_workers": 0, "max_workers": MAX_NODES},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # an idle worker node goes after 6 s
        "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                           "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


def _stop_with_parent() -> None:
    """In the head's `ray start`: get SIGTERM (and stop the head) if this test process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class FakeCluster:
    """A head started with `ray start --head --block --autoscaling-config` (fake multi-node provider)."""

    def __init__(self) -> None:
        import ray._private.services

        self.root = Path(tempfile.mkdtemp(prefix="gr-as-", dir="/tmp"))  # short: Unix socket paths
        self.ip = ray._private.services.get_node_ip_address()
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(
            RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", AUTOSCALER_HEARTBEAT_TIMEOUT_S="20",
            # token authentication, as users' clusters run it, with a token of this cluster's own (a
            # ~/.ray/auth_token turns it on for `ray start`, and then clients must send the token)
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
            RAY_USAGE_STATS_ENABLED="0", RAY_SCHEDULER_EVENTS="0", PYTHONUNBUFFERED="1",
            RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="180",
        )
        logs = []
        for attempt in range(START_ATTEMPTS):
            self.log = self.root / f"head-{attempt}.log"
            if self._start_head():
                self.head_id = self.head_raylet()
                return
            logs.append(self.log.read_text()[-3000:])  # read before shutdown() removes the folder
            if self.head.poll() is None:  # still starting at the deadline: no second try
                break
            self._stop_head()  # it exited: a port chosen free was taken meanwhile, say; new ports
        self.shutdown()
        raise RuntimeError("the head did not start:\n" + "\n---\n".join(logs))

    def _start_head(self) -> bool:
        """Start `ray start --head` on free ports; True once its raylet runs, False if it exits or hangs."""
        port = free_port()
        self.address = f"{self.ip}:{port}"
        config = self.root / "autoscaling.json"
        config.write_text(json.dumps(autoscaling_config(self.address)))
        system_config = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
        command = [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
            f"--autoscaling-config={config}", "--num-cpus=0", f"--object-store-memory={150 * 1024**2}",
            f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats",
            f"--system-config={json.dumps(system_config, separators=(',', ':'))}",
            *(f"--{flag}={free_port()}" for flag in (
                "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")),
        ]
        with self.log.open("w") as out:
            self.head = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=_stop_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.head_raylet() and "Ray runtime started" in self.log.read_text()):
            if self.head.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def head_raylet(self) -> str | None:
        """The head's node id (its raylet is a child of `ray start`), once it runs."""
        return next((n for n, p in self.raylets().items() if p.ppid() == self.head.pid), None)

    def raylets(self) -> dict[str, psutil.Process]:
        """The raylet of each node of this cluster by node id: the head's and those the autoscaler started."""
        found = {}
        for proc in psutil.Process(self.head.pid).children(recursive=True):  # only what we started
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            if args and Path(args[0]).name == "raylet":
                node = [a.split("=", 1)[1] for a in args if a.startswith("--node_id=")]
                if node:
                    found[node[0]] = proc
        return found

    def worker_raylets(self) -> dict[str, psutil.Process]:
        return {n: p for n, p in self.raylets().items() if n != self.head_id}

    def driver_env(self) -> dict:
        return {**self.env, "RAY_ADDRESS": self.address}

    def nodes(self) -> dict:
        """ray.nodes() of the cluster, {node id: {alive, cpus}}, from a driver process of its own."""
        out = subprocess.run([sys.executable, "-c", NODES_PROBE], env=self.driver_env(), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_until_idle_nodes_are_gone(self, timeout: float = 120) -> dict:
        """Poll until the autoscaler has removed every worker node; return ray.nodes() then."""
        deadline = time.monotonic() + timeout
        while self.worker_raylets() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.worker_raylets(), "the autoscaler did not remove the idle worker nodes"
        while True:  # their processes are gone; the GCS says so too
            nodes = self.nodes()
            alive = {n for n, v in nodes.items() if v["alive"]}
            if alive == {self.head_id} or time.monotonic() > deadline:
                return nodes
            time.sleep(0.5)

    def kill_node(self, node_id: str) -> list[psutil.Process]:
        """Lose a worker node at once: SIGKILL its raylet and the processes under it (its Ray workers)."""
        assert node_id != self.head_id
        raylet = self.raylets()[node_id]
        procs = [raylet, *raylet.children(recursive=True)]
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        return procs

    def _stop_head(self) -> None:
        """End the head's process tree (with the nodes the autoscaler added) at once."""
        try:
            head = psutil.Process(self.head.pid)
            procs = [head, *head.children(recursive=True)]  # worker nodes do not share the head's fate
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:  # SIGKILL, as `ray stop --force` in AutoscalingCluster.shutdown: on SIGTERM
            try:  # the raylets, the GCS and `ray start` itself took over 20 s here
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=15)
        self.head.wait(timeout=15)

    def shutdown(self) -> None:
        """End every process of the cluster and remove its folder."""
        self._stop_head()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """One autoscaling cluster for this module's scenarios, stopped at its end."""
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.shutdown()


def job(tmp_path: Path, name: str, **sections) -> dict:
    raw = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    raw["name"] = name
    raw["storage"] = {"path": str(tmp_path / "runs"), "shared": True}  # every fake node sees this folder
    return raw


def start_tune(cluster: FakeCluster, raw: dict, folder: Path) -> subprocess.Popen:
    """`gerne-ray tune` on the spec, as a driver connected to the cluster (RAY_ADDRESS)."""
    path = folder / f"{raw['name']}.json"
    path.write_text(json.dumps(raw))
    with (folder / f"{raw['name']}.log").open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "gerne_ray.cli", "tune", str(path)], cwd=folder,
                                env=cluster.driver_env(), stdout=out, stderr=subprocess.STDOUT)


def finish(driver: subprocess.Popen, raw: dict, folder: Path) -> Path:
    """Wait for the driver, which must succeed; return the run folder."""
    try:
        rc = driver.wait(timeout=RUN_TIMEOUT_S)
    finally:
        driver.kill()
        driver.wait()
    log = (folder / f"{raw['name']}.log").read_text()
    assert rc == 0, log[-4000:]
    return folder / "runs" / raw["name"]


def histories(run_dir: Path) -> dict[str, list[dict]]:
    """Each trial's epochs from trial_histories.parquet, by trial id."""
    hist = pd.read_parquet(run_dir / "trial_histories.parquet")
    return {tid: rows.sort_index().to_dict("records") for tid, rows in hist.groupby("trial_id")}


def nodes_of(row: dict) -> list[str]:
    return list(row["node_ids"])


def test_a_search_scales_the_cluster_out_and_back_in(cluster, tmp_path):
    before = cluster.wait_until_idle_nodes_are_gone()  # (after another test) only the head is up
    assert before[cluster.head_id]["cpus"] == 0  # and it has no room for a trial
    raw = job(tmp_path, "scale")
    run_dir = finish(start_tune(cluster, raw, tmp_path), raw, tmp_path)

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 and set(trials.status) == {"completed"}
    used = set()
    for tid, rows in histories(run_dir).items():
        assert [r["epoch"] for r in rows] == [1, 2], tid
        for r in rows:
            assert len(nodes_of(r)) == 1
            used |= set(nodes_of(r))
    assert used and used.isdisjoint(before)  # the trials ran on new nodes: the autoscaler started them
    # ... and the autoscaler removes them once idle
    after = cluster.wait_until_idle_nodes_are_gone()
    assert {n for n, v in after.items() if v["alive"]} == {cluster.head_id}
    assert used <= {n for n, v in after.items() if not v["alive"]}


def test_strict_spread_puts_the_two_workers_of_a_trial_on_two_nodes(cluster, tmp_path):
    raw = job(tmp_path, "spread", search={"num_samples": 1, "max_concurrent": 1},
              scaling={"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD"})
    run_dir = finish(start_tune(cluster, raw, tmp_path), raw, tmp_path)

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert list(trials.status) == ["completed"]
    (tid, rows), = histories(run_dir).items()
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        ranks = nodes_of(r)  # rank 0's node, rank 1's node
        assert len(ranks) == 2 and len(set(ranks)) == 2 and cluster.head_id not in ranks
    # rank 0 wrote the Train run's checkpoints from its node into the shared storage
    assert list((run_dir / "train" / tid).glob("checkpoint_*/checkpoint.pt"))


def reported_epochs(trial_dir: Path) -> list[int]:
    """The epochs Tune logged for a trial (its result.json), in order."""
    path = trial_dir / "result.json"
    epochs = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            epochs.append(json.loads(line)["epoch"])
        except ValueError:  # a line still being written
            break
    return epochs


def running_trial(run_dir: Path, epochs: int) -> tuple[str, list[int], dict] | None:
    """A trial with epoch 2 to 4 logged and the rest (at least half of its epochs) to go: (trial id,
    epochs logged, its newest checkpoint's state), or None.

    Tune registers a trial's checkpoint in a second round trip after logging its result (the trainable's
    `save`); it asks for the next result only after that: once epoch 2 is logged, the checkpoint of
    epoch 1 at least is the trial's to restore.
    """
    for trial_dir in sorted(run_dir.glob("*/")) if run_dir.is_dir() else []:
        logged = reported_epochs(trial_dir)
        if not logged or not 2 <= max(logged) <= min(4, epochs // 2):
            continue
        for path in sorted(trial_dir.glob("checkpoint_*/checkpoint.pt"), reverse=True):
            try:
                return trial_dir.name, logged, load_state(path)
            except GerneError:  # still being copied into the storage
                continue
    return None


def journal_trials(run_dir: Path, name: str) -> list:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


def test_a_trial_whose_node_is_lost_resumes_on_another_node(cluster, tmp_path):
    # the node goes once epoch 2 (to 4) is logged: six epochs or more (>= 3 s) still to go, so that the
    # trial is still running when its node is killed, even on a loaded machine
    epochs = 10
    raw = job(tmp_path, "lost", optim={"epochs": epochs, "steps_per_epoch": 30},
              scaling={"max_failures": 2})
    run_dir = tmp_path / "runs" / "lost"
    driver = start_tune(cluster, raw, tmp_path)
    found = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while found is None and driver.poll() is None and time.monotonic() < deadline:
        found = running_trial(run_dir, epochs)
        time.sleep(0.05)
    assert found is not None, (tmp_path / "lost.log").read_text()[-4000:]
    victim, logged, state = found
    lost_node = nodes_of(state["history"][0])[0]
    killed = cluster.kill_node(lost_node)  # the node of a running trial, with its Ray workers
    assert not any(p.is_running() for p in killed)
    finish(driver, raw, tmp_path)

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == raw["search"]["num_samples"] and set(trials.status) == {"completed"}
    assert len(journal_trials(run_dir, "lost")) == raw["search"]["num_samples"]  # no trial replaced
    hist = histories(run_dir)
    assert set(hist) == set(trials.trial_id)
    for tid, rows in hist.items():  # no epoch missing, none twice
        assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)), tid
    ran_on = [nodes_of(r)[0] for r in hist[victim]]
    kept = 0  # the epochs up to the checkpoint the trial resumed from, trained on the lost node
    while kept < len(ran_on) and ran_on[kept] == lost_node:
        kept += 1
    assert max(logged) - 1 <= kept < epochs and lost_node not in ran_on[kept:], (logged, ran_on)
    # Tune logged no kept epoch twice (no restart from epoch 1), and every later one. (Not necessarily
    # each kept one: the node may die after Tune registered an epoch's checkpoint and before its
    # JSON logger wrote the epoch's result; trial_histories.parquet, read above, has every epoch.)
    reported = reported_epochs(run_dir / victim)
    before = [e for e in reported if e <= kept]
    assert before == sorted(set(before)) and before[:1] == [1], reported
    assert set(range(kept + 1, epochs + 1)) <= set(reported) <= set(range(1, epochs + 1)), reported
