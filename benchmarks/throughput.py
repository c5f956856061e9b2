"""Training throughput of one GERNE step against one ERM step over the same number of samples.

ERM: one batch of 2n samples, one forward, one backward, one SGD step. GERNE: a biased and a
less-biased batch of n samples each, the extrapolated loss (gerne_ray.step.gerne_losses, beta = 1),
one backward, one SGD step, in each of the ways `forward` allows:
  two       two forward passes, one per batch (each batch normalised by its own BatchNorm statistics)
  concat    one forward over the concatenation (mixes the two batches' BatchNorm statistics)
  split_bn  one forward over the concatenation, BatchNorm statistics per half (= "two" exactly)
  auto      what training uses: split_bn for a BatchNorm model, concat otherwise
Data are random tensors already on the device, so only the step is timed; x_b and x_lb are the two
halves of ERM's batch (adjacent views, as a loader that gathers both batches at once would give), so
the one-forward variants see exactly ERM's input without a copy. Each variant has its own model and
optimiser (same seed); after warm-up steps the variants take turns, round after round, the order
rotating; each keeps its best round (the least disturbed by other load on the machine), and the
median over rounds of ERM's time / the variant's time in the same round is reported beside it.
On a CPU the default also repeats the table timed by the CPU time of the calling thread with one
torch thread, which other processes on the machine disturb less than the wall clock.

Run: python benchmarks/throughput.py [--device cuda] [--quick] [--rounds 20] [--out benchmarks/results]
Writes benchmarks/results/throughput_<device>.md (not in --quick mode unless --out is given).
`measure(model_name, variant, device, steps)` is the reusable unit (samples per second).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gerne_ray.models import build_model
from gerne_ray.step import gerne_losses, has_batch_statistics

VARIANTS = ("erm", "two", "concat", "split_bn", "auto")
TARGET = 0.95  # GERNE samples/s at least this fraction of ERM's (the target)


@dataclass(frozen=True)
class Bench:
    """A model to measure: the arch, its input shape, n samples per GERNE batch (ERM gets 2n)."""

    arch: str
    input_shape: tuple[int, ...]
    n: int
    num_classes: int
    steps: dict[str, int]  # timed steps per round, by device type
    note: str


MODELS: dict[str, Bench] = {
    "mlp": Bench("mlp", (3, 28, 28), 256, 10, {"cpu": 50, "cuda": 100},
                 "3 hidden layers of 100 on flattened 3x28x28 inputs (2352 features, Colored MNIST)"),
    "resnet18": Bench("resnet18", (3, 32, 32), 64, 10, {"cpu": 1, "cuda": 50},
                      "torchvision ResNet-18 (20 BatchNorm layers) on 3x32x32"),
}


def _device(device: str) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_steps(model_name: str, device: str) -> int:
    """Timed steps per round of a model on a device type."""
    steps = MODELS[model_name].steps
    return steps.get(torch.device(device).type, steps["cuda"])


class Runner:
    """One model, its optimiser and its (random, on-device) data, ready to take training steps."""

    def __init__(self, model_name: str, variant: str, device: str = "cpu", seed: int = 0):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
        bench = MODELS[model_name]
        self.variant, self.device = variant, _device(device)
        self.samples_per_step = 2 * bench.n
        torch.manual_seed(seed)
        self.model = build_model(bench.arch, bench.input_shape, bench.num_classes).to(self.device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(2 * bench.n, *bench.input_shape, generator=g).to(self.device)
        self.y = torch.randint(0, bench.num_classes, (2 * bench.n,), generator=g).to(self.device)
        self.n = bench.n

    def step(self) -> None:
        """Forward, one backward, one SGD step: ERM on 2n samples or GERNE on n + n."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.variant == "erm":
            loss = F.cross_entropy(self.model(self.x), self.y)
        else:
            n, x, y = self.n, self.x, self.y
            loss = gerne_losses(self.model, x[:n], y[:n], x[n:], y[n:], 1.0, self.variant).loss
        loss.backward()
        self.optimizer.step()

    def seconds_per_step(self, steps: int, clock: str = "wall") -> float:
        """Mean seconds of `steps` consecutive steps: wall clock, or CPU time of this thread."""
        timer = time.perf_counter if clock == "wall" else time.thread_time
        _sync(self.device)
        start = timer()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return (timer() - start) / steps


def measure(model_name: str, variant: str, device: str = "cpu", steps: int | None = None,
            warmup: int = 3, rounds: int = 1, clock: str = "wall") -> float:
    """Training samples per second of `variant` ("erm" or a GERNE forward): best of `rounds` of `steps`."""
    runner = Runner(model_name, variant, device)
    for _ in range(warmup):
        runner.step()
    steps = steps or default_steps(model_name, device)
    return runner.samples_per_step / min(runner.seconds_per_step(steps, clock) for _ in range(rounds))


def run_table(models: list[str], device: str, rounds: int, steps: int | None, warmup: int,
              clock: str = "wall") -> list[dict]:
    """Every variant of every model, measured in turns over `rounds` rounds (the order rotating)."""
    rows = []
    for name in models:
        runners = {v: Runner(name, v, device) for v in VARIANTS}
        for runner in runners.values():
            for _ in range(warmup):
                runner.step()
        k = steps or default_steps(name, device)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                times[variant].append(runners[variant].seconds_per_step(k, clock))
            print(f"  {name:9s} round {r + 1:2d}/{rounds} samples/s " + "  ".join(
                f"{v} {2 * MODELS[name].n / times[v][-1]:.0f}" for v in VARIANTS), flush=True)
        for variant in VARIANTS:
            paired = sorted(e / t for e, t in zip(times["erm"], times[variant], strict=True))
            rows.append({"model": name, "variant": variant,
                         "samples_s": 2 * MODELS[name].n / min(times[variant]),
                         "ratio": min(times["erm"]) / min(times[variant]),
                         "ratio_median": paired[len(paired) // 2] if len(paired) % 2 else
                         (paired[len(paired) // 2 - 1] + paired[len(paired) // 2]) / 2})
        del runners
    return rows


def format_table(rows: list[dict]) -> str:
    """The markdown table: model, variant, samples/s, ratio to ERM, and whether it meets the target."""
    lines = ["| model | samples per step | variant | samples/s (best round) | ratio to ERM (best rounds) "
             "| ratio to ERM (median of paired rounds) | median >= 0.95 |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        bench = MODELS[row["model"]]
        per = f"2n = {2 * bench.n}" if row["variant"] == "erm" else f"n + n = {bench.n} + {bench.n}"
        meets = "" if row["variant"] == "erm" else ("yes" if row["ratio_median"] >= TARGET else "**no**")
        lines.append(f"| {row['model']} | {per} | {row['variant']} | {row['samples_s']:.1f} | "
                     f"{row['ratio']:.3f} | {row['ratio_median']:.3f} | {meets} |")
    return "\n".join(lines)


def twin_spread(rows: list[dict]) -> str:
    """How far apart the median ratios of variants that run the same code on a model are: the noise."""
    parts = []
    for name in dict.fromkeys(row["model"] for row in rows):
        bench = MODELS[name]
        bn = has_batch_statistics(build_model(bench.arch, bench.input_shape, bench.num_classes))
        twins = ("split_bn", "auto") if bn else ("concat", "split_bn", "auto")
        ratios = [row["ratio_median"] for row in rows if row["model"] == name and row["variant"] in twins]
        parts.append(f"{name}: {', '.join(twins)} run the same code and their median ratios differ by "
                     f"{max(ratios) - min(ratios):.3f}")
    return "Noise: " + "; ".join(parts) + ". Read smaller differences as noise."


def machine(device: str) -> str:
    """CPU model, cores, threads, torch version, GPU if any, and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"CPU {cpu}", f"{os.cpu_count()} cores", f"{torch.get_num_threads()} torch threads",
             f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    if torch.device(device).type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(torch.device(device))}")
    parts.append(dt.date.today().isoformat())
    return ", ".join(parts)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: per model)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu", "both"), default=None,
                        help="wall: wall clock, all threads; cpu: CPU time of the one thread, 1 torch thread "
                        "(insensitive to other load); default both on cpu, wall on cuda")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 1 step after 1 warm-up: a smoke test")
    parser.add_argument("--out", default=None, help="folder for throughput_<device>.md "
                        "(default benchmarks/results; nothing is written in --quick mode unless given)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, args.steps or 1, 1
    dev = _device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    clocks = {"both": ["wall", "cpu"], None: ["wall", "cpu"] if dev.type == "cpu" else ["wall"]}.get(
        args.clock, [args.clock])
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    sections = []
    start = time.perf_counter()
    for clock in clocks:
        threads = available if clock == "wall" else 1
        torch.set_num_threads(threads)
        print(f"clock {clock}, {threads} torch threads", flush=True)
        load_before = _load()
        rows = run_table(args.models, args.device, args.rounds, args.steps, args.warmup, clock)
        table = format_table(rows)
        print(table, flush=True)
        what = (f"wall clock, {threads} torch threads" if clock == "wall"
                else "CPU time of the calling thread, 1 torch thread (counts only this process's work)")
        load = f"Load average (1, 5, 15 min) before: {load_before}; after: {_load()}."
        sections += [f"## {what}", "", load, "", table, "", twin_spread(rows), ""]
    seconds = time.perf_counter() - start
    torch.set_num_threads(available)

    out = args.out or (None if args.quick else str(Path(__file__).parent / "results"))
    if out is None:
        return
    steps = ", ".join(f"{m}: {args.steps or default_steps(m, args.device)}" for m in args.models)
    command = "python benchmarks/throughput.py" + (f" --device {args.device}" if dev.type != "cpu" else "")
    doc = "\n".join([
        f"# Training throughput: one GERNE step vs one ERM step ({dev.type})",
        "",
        f"Machine: {machine(args.device)}.",
        f"Command: `{command}`. Each variant of a model has its own model and optimiser; after "
        f"{args.warmup} warm-up steps each, the variants take turns, {args.rounds} rounds, the order "
        f"rotating each round; a round times {steps} consecutive steps. 'best round' uses each "
        f"variant's fastest round (the least disturbed by other load); 'median of paired rounds' is "
        f"the median over rounds of ERM's time / the variant's time in the same round. "
        f"{seconds:.0f} s in all.",
        "",
        "Same samples per step: ERM one batch of 2n, GERNE a biased and a less-biased batch of n each, "
        "beta = 1 (forward + backward + SGD step with momentum 0.9 and weight decay; random data already "
        "on the device).",
        *(f"- {m}: {MODELS[m].note}." for m in args.models),
        "",
        *sections,
        f"Target: GERNE >= {TARGET}x ERM samples/s, judged on the median of paired rounds (one lucky ERM "
        "round moves every 'best rounds' ratio at once; the paired median is steadier).",
        "",
    ])
    path = Path(out) / f"throughput_{dev.type}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
