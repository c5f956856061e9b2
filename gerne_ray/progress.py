"""A training run's progress for the person watching: epoch n of N, samples/s, the metric, time left.

`gerne-ray train` hands an `EpochProgress` to the training loop (gerne_ray.loop.train_loop's
`progress`), which calls `start(first_epoch)` before its first epoch and `epoch_done(row)` with each
finished epoch's history row. On a terminal the reporter rewrites one line (a carriage return before
each update); elsewhere (a pipe, a log file) it writes one plain line per epoch. It only reads the
rows: a run with a reporter trains exactly as one without. Tune trials get none.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO


def clock_text(seconds: float) -> str:
    """Seconds as h:mm:ss (rounded to the second)."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EpochProgress:
    """Reports each finished epoch of one run to a stream (stderr by default)."""

    def __init__(self, epochs: int, metric: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.epochs, self.metric, self.clock = epochs, metric, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.first, self.started = 1, clock()
        self.shown = 0  # characters of the line now on a terminal (0: none open)

    def start(self, first_epoch: int) -> None:
        """The loop begins at first_epoch (later than 1 when it resumes a checkpoint)."""
        self.first, self.started = first_epoch, self.clock()

    def line(self, row: dict, elapsed: float) -> str:
        """One epoch's report: `epoch 3/20: 1234 samples/s, val_gba 85.12, 0:01:30 left`."""
        epoch = row["epoch"]
        head = f"epoch {epoch}/{self.epochs}: {row['samples_per_s']:.0f} samples/s"
        if row["status"] != "ok":
            return f"{head}, {row['status']}: {row['reason']}"
        value = row.get(self.metric)
        shown = f"{100 * value:.2f}" if value is not None and math.isfinite(value) else "n/a"
        if epoch >= self.epochs:
            return f"{head}, {self.metric} {shown}, done in {clock_text(elapsed)}"
        left = elapsed / (epoch - self.first + 1) * (self.epochs - epoch)  # mean epoch so far x epochs left
        return f"{head}, {self.metric} {shown}, {clock_text(left)} left"

    def epoch_done(self, row: dict) -> None:
        """Report a finished epoch's history row."""
        text = self.line(row, self.clock() - self.started)
        if not self.tty:
            self.stream.write(text + "\n")
        else:  # overwrite the line in place; pad with spaces where the last one was longer
            self.stream.write("\r" + text.ljust(self.shown))
            self.shown = len(text)
            if row["epoch"] >= self.epochs or row["status"] != "ok":
                self.close()
        self.stream.flush()

    def close(self) -> None:
        """End the terminal's progress line (nothing to do elsewhere)."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = 0
