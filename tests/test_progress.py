"""`gerne-ray train`'s progress: one line per epoch off a terminal, one rewritten line on it, and a
time-left estimate from the epochs run so far; training itself is unchanged by it."""

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from gerne_ray.demo import DEMO_SPEC
from gerne_ray.progress import EpochProgress, clock_text
from gerne_ray.spec import load_spec
from gerne_ray.training import train

CLI = [str(Path(sys.executable).parent / "gerne-ray")]
LINE = re.compile(r"epoch (\d+)/(\d+): (\d+) samples/s, val_gba (\d+\.\d\d), "
                  r"(?:(\d+:\d\d:\d\d) left|done in (\d+:\d\d:\d\d))")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A clock that reads the times it is given, one per call."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def row(epoch: int, value: float = 0.5, status: str = "ok", reason: str = "") -> dict:
    return {"epoch": epoch, "status": status, "reason": reason, "samples_per_s": 1234.4, "val_gba": value}


def test_clock_text():
    assert [clock_text(s) for s in (0, 59.4, 59.6, 61, 3725, 36000, -3)] == [
        "0:00:00", "0:00:59", "0:01:00", "0:01:01", "1:02:05", "10:00:00", "0:00:00"]


def test_a_terminal_gets_one_line_rewritten_with_the_time_left():
    out = Terminal()
    # built at 0, started at 100; epochs end at 112, 130, 136, 150
    progress = EpochProgress(4, "val_gba", out, clock=Clock(0, 100, 112, 130, 136, 150))
    progress.start(1)
    progress.epoch_done(row(1, 0.1234))
    # one epoch in 12 s, three left: 36 s
    assert out.getvalue() == "\repoch 1/4: 1234 samples/s, val_gba 12.34, 0:00:36 left"
    progress.epoch_done(row(2, math.nan))
    progress.epoch_done(row(3, 0.9))
    assert "\n" not in out.getvalue()
    progress.epoch_done(row(4, 0.91))
    updates = out.getvalue().split("\r")
    assert updates[0] == "" and len(updates) == 5
    # two epochs in 30 s: 15 s each, two left; three in 36 s: 12 s each, one left; the last: the total
    assert [u.rstrip() for u in updates[1:]] == [
        "epoch 1/4: 1234 samples/s, val_gba 12.34, 0:00:36 left",
        "epoch 2/4: 1234 samples/s, val_gba n/a, 0:00:30 left",
        "epoch 3/4: 1234 samples/s, val_gba 90.00, 0:00:12 left",
        "epoch 4/4: 1234 samples/s, val_gba 91.00, done in 0:00:50",
    ]
    # a shorter line than the one on screen is padded over it; the finished line ends with a newline
    assert updates[3] == "epoch 3/4: 1234 samples/s, val_gba 90.00, 0:00:12 left".ljust(len(updates[2]))
    assert updates[4].endswith("done in 0:00:50\n") and out.getvalue().count("\n") == 1
    progress.close()
    assert out.getvalue().count("\n") == 1  # closing again writes nothing


def test_a_resumed_run_estimates_from_the_epochs_it_ran():
    out = Terminal()
    progress = EpochProgress(10, "val_wga", out, clock=Clock(0, 1000, 1020, 1050))
    progress.start(5)  # epochs 1-4 came from the checkpoint
    progress.epoch_done({**row(5), "val_wga": 0.25})
    progress.epoch_done({**row(6), "val_wga": 0.5})
    first, second = out.getvalue().split("\r")[1:]
    assert first == "epoch 5/10: 1234 samples/s, val_wga 25.00, 0:01:40 left"  # 20 s x 5 epochs
    assert second.rstrip() == "epoch 6/10: 1234 samples/s, val_wga 50.00, 0:01:40 left"  # 25 s x 4
    progress.close()  # interrupted: the line is ended so that an error starts on its own line
    assert out.getvalue().endswith("left\n")


def test_off_a_terminal_each_epoch_is_a_plain_line():
    out = io.StringIO()
    progress = EpochProgress(3, "val_gba", out, clock=Clock(0, 0, 10, 20))
    progress.start(1)
    progress.epoch_done(row(1))
    progress.epoch_done(row(2, status="diverged", reason="mean training loss became nan in epoch 2"))
    progress.close()
    assert out.getvalue().splitlines(keepends=True) == [
        "epoch 1/3: 1234 samples/s, val_gba 50.00, 0:00:20 left\n",
        "epoch 2/3: 1234 samples/s, diverged: mean training loss became nan in epoch 2\n",
    ]


def test_gerne_ray_train_prints_a_line_per_epoch(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**DEMO_SPEC, "name": "progress", "storage": {"path": str(tmp_path)}}))
    proc = subprocess.run([*CLI, "train", str(spec), "--set", "optim.epochs=3"],
                          capture_output=True, text=True, timeout=300)  # stderr is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr
    lines = [LINE.fullmatch(line) for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and all(lines) and "\r" not in proc.stderr, proc.stderr
    history = pq.read_table(tmp_path / "progress" / "history.parquet").to_pylist()
    for epoch, (match, recorded) in enumerate(zip(lines, history, strict=True), start=1):
        assert (int(match[1]), int(match[2])) == (epoch, 3)
        assert int(match[3]) == round(recorded["samples_per_s"])
        assert float(match[4]) == pytest.approx(100 * recorded["val_gba"], abs=0.006)
        assert (match[5] is None) == (epoch == 3)  # time left until the last epoch, then the total
    assert not any(line.startswith("epoch ") for line in proc.stdout.splitlines())  # stdout: the result


def test_reporting_progress_changes_no_result(tmp_path):
    spec = load_spec(DEMO_SPEC, ["optim.epochs=2"])
    quiet = train(load_spec(spec, [f"storage.path={tmp_path / 'quiet'}"]))
    out = io.StringIO()
    shown = train(load_spec(spec, [f"storage.path={tmp_path / 'shown'}"]),
                  progress=EpochProgress(2, spec.search.metric, out))
    assert out.getvalue().count("\n") == 2
    keys = [k for k in quiet if k != "config"]
    assert {k: shown[k] for k in keys} == {k: quiet[k] for k in keys}
