"""Training throughput through the real loop: GERNE vs ERM, 1 worker in-process vs Ray Train workers.

Same samples per step for both methods: ERM draws one batch of 2B per class, GERNE a biased and a
less-biased batch of B per class each. Samples/s is the loop's own `samples_per_s` (training steps
only, over all workers), median over the epochs after the first.

Run: python benchmarks/workers.py [--workers 1 2] [--device cpu|cuda] [--quick]
GPU variant (one command): python benchmarks/workers.py --device cuda --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gerne_ray.loop import train_loop
from gerne_ray.spec import load_spec

MODELS = {
    # name: (arch, B per class for GERNE)
    "mlp": ("mlp", 32),
    "resnet18": ("resnet18", 8),
}


def spec_for(model: str, method: str, workers: int, device: str, epochs: int, steps: int, storage: str):
    """The benchmark spec: colored_digits, fixed steps per epoch, ERM with twice GERNE's batch."""
    arch, b = MODELS[model]
    return load_spec({
        "name": f"bench-{model}-{method}-{workers}",
        "data": {"dataset": "colored_digits", "conflict_ratio": 0.02},
        "model": {"arch": arch},
        "method": {"name": method, "c": 0.5, "beta": 1.0},
        "optim": {"lr": 0.01, "epochs": epochs, "steps_per_epoch": steps,
                  "batch_size_per_class": b if method == "gerne" else 2 * b},
        "scaling": {"num_workers": workers, "use_gpu": device == "cuda",
                    "cpus_per_worker": 1},
        "storage": {"path": storage},
    })


def measure(model: str, method: str, workers: int, device: str, epochs: int, steps: int) -> float:
    """Median training samples/s over epochs 2.. of one run."""
    from gerne_ray.distributed import fit_distributed
    from gerne_ray.training import prepare

    with tempfile.TemporaryDirectory() as storage:
        spec = spec_for(model, method, workers, device, epochs, steps, storage)
        prepared = prepare(spec)
        history = fit_distributed(spec, prepared) if spec.scaling.distributed else train_loop(spec, prepared)
    return statistics.median(r["samples_per_s"] for r in history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    epochs, steps = (2, 3) if args.quick else (4, 40)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if max(args.workers) > 1 or args.device == "cuda":
        import ray

        ray.init(num_cpus=max(os.cpu_count() or 1, max(args.workers)), logging_level="WARNING")
    rows = []
    start = time.perf_counter()
    for model in MODELS:
        for workers in args.workers:
            erm = measure(model, "erm", workers, args.device, epochs, steps)
            gerne = measure(model, "gerne", workers, args.device, epochs, steps)
            rows.append((model, workers, erm, gerne))
            print(f"{model} {workers} worker(s): ERM {erm:.0f}, GERNE {gerne:.0f} samples/s, "
                  f"ratio {gerne / erm:.3f}", flush=True)
    lines = [
        f"# Training throughput through the loop, {args.device}: GERNE vs ERM, 1 vs more workers",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Command: `python benchmarks/workers.py"
        f"{' --device cuda' if args.device == 'cuda' else ''}`. {time.perf_counter() - start:.0f} s.",
        f"Data: colored_digits (3x8x8); {steps} steps per epoch, median of epochs 2..{epochs}; forward: "
        "auto. GERNE: B per class in each of its two batches; ERM: 2B per class in one batch.",
        "",
        "| model | workers | ERM samples/s | GERNE samples/s | GERNE / ERM | scaling vs 1 worker (GERNE) |",
        "|---|---|---|---|---|---|",
    ]
    base = {m: g for m, w, _, g in rows if w == min(args.workers)}
    for model, workers, erm, gerne in rows:
        lines.append(f"| {model} | {workers} | {erm:.0f} | {gerne:.0f} | {gerne / erm:.3f} | "
                     f"{gerne / base[model]:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"workers_{args.device}.md").write_text(text)


if __name__ == "__main__":
    main()
