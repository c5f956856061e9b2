"""The gerne-ray command: validate, bounds, train, tune, compare, methods, schema, submit, resume, report,
demo."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import sys

from gerne_ray import groups
from gerne_ray.errors import GerneError
from gerne_ray.spec import load_spec


def _json_number(x):
    """x for JSON: an infinite float as the string "Infinity" or "-Infinity" (JSON has no infinities;
    float() in Python and Number() in JavaScript read both strings back), anything else as is."""
    if isinstance(x, float) and math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if isinstance(x, dict):
        return {k: _json_number(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_number(v) for v in x]
    return x


def bounds_report(spec_path: str, overrides: list[str]) -> dict:
    """The training split's group table and beta's bounds for the spec's c (floats; a bound that nothing
    constrains is -inf or inf)."""
    from gerne_ray.data import load_dataset
    from gerne_ray.training import training_stats

    spec = load_spec(spec_path, overrides)
    stats = training_stats(load_dataset(spec.data))
    c = spec.method.c
    lo, hi = groups.simplified_bounds(stats, c)
    ex_lo, ex_hi = groups.exact_bounds(stats, c)
    return {
        "name": spec.name,
        "dataset": spec.data.dataset,
        "K": stats.K,
        "A": stats.A,
        "c": c,
        "groups": stats.to_rows(),
        "empty_groups": [list(g) for g in stats.empty_groups()],
        "beta_min": lo,
        "beta_max": hi,
        "exact_lower": ex_lo,
        "exact_upper": ex_hi,
        "lambda_max": groups.lambda_max(stats),
    }


def print_bounds(report: dict) -> None:
    """Human-readable form of bounds_report."""
    show = lambda v: f"{v:.4f}"  # noqa: E731  (an infinite bound prints as -inf or inf)
    print(f"{report['name']}: dataset {report['dataset']}, training split, "
          f"K = {report['K']} classes, A = {report['A']} attributes")
    print(f"{'y':>4} {'a':>4} {'count':>8} {'alpha':>8}")
    for g in report["groups"]:
        print(f"{g['y']:>4} {g['a']:>4} {g['count']:>8} {g['alpha']:>8.4f}")
    print(f"c = {report['c']}")
    print(f"simplified bounds: beta in [{show(report['beta_min'])}, {show(report['beta_max'])}]"
          f"  (lambda = c (beta + 1) in [0, {show(report['lambda_max'])}])")
    print(f"exact bounds:      beta in [{show(report['exact_lower'])}, {show(report['exact_upper'])}]")
    if report["empty_groups"]:
        print(f"warning: {len(report['empty_groups'])} empty training groups (y, a): "
              f"{[tuple(g) for g in report['empty_groups']]}; they are never sampled and the bounds "
              "use each class's count of non-empty groups A_y in place of A", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate each spec, including beta against its data's bounds."""
    from gerne_ray.training import prepare

    for path in args.specs:
        spec = load_spec(path, args.set)
        prepare(spec)
        print(f"{path}: ok ({spec.name}: {spec.data.dataset}, {spec.model.arch}, {spec.method.name})")
    return 0


def cmd_bounds(args: argparse.Namespace) -> int:
    """Print the group table and beta's bounds."""
    report = bounds_report(args.spec, args.set)
    if args.json:
        print(json.dumps(_json_number(report), indent=2, allow_nan=False))
    else:
        print_bounds(report)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one configuration and print its selected metrics."""
    from gerne_ray.progress import EpochProgress
    from gerne_ray.training import train

    spec = load_spec(args.spec, args.set)
    progress = EpochProgress(spec.optim.epochs, spec.search.primary)  # stderr; rewritten in place on a tty
    try:
        result = train(spec, progress=progress)
    finally:
        progress.close()
    print(f"{spec.name}: {result['status']}{' (' + result['reason'] + ')' if result['reason'] else ''}; "
          f"epoch {result['best_epoch']} selected by {result['selection_metric']}")
    for key in ("val_gba", "val_wga", "test_gba", "test_wga", "test_avg"):
        if result[key] is not None:
            print(f"  {key:10s} {100 * result[key]:6.2f}")
    print(f"results in {spec.folder.location}/ (result.json, history.parquet)")
    return 0


def print_tune_result(result) -> None:
    """The best configuration and its metrics, as the terminal shows them after a search."""
    best = result.best
    cfg = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                    for k, v in best["best_config"].items())
    print(f"best trial {best['trial_id']}: {cfg}; epoch {best['best_epoch']} by {best['selection_metric']}")
    for key in ("val_gba", "val_wga", "test_gba", "test_wga"):
        if best[key] is not None:
            print(f"  {key:10s} {100 * best[key]:6.2f}")
    final = best.get("final_seeds")
    if final:
        print(f"over {len(final['seeds'])} new seeds {final['seeds']} (mean +- std):")
        for key in ("test_gba", "test_wga"):
            if final["mean"][key] is not None:
                print(f"  {key:10s} {100 * final['mean'][key]:6.2f} +- {100 * final['std'][key]:5.2f}")
    print(f"results in {result.location}/ (report.md, report.html, best.json, trials.parquet, plots/)")


def _spec_arg(spec: str) -> str | dict:
    """A spec path, or `env:NAME`: the JSON spec a submitted job carries in that variable."""
    if spec.startswith("env:"):
        from gerne_ray.submit import spec_from_env

        return spec_from_env(spec.removeprefix("env:"))
    return spec


def cmd_tune(args: argparse.Namespace) -> int:
    """Search beta (and c, lr, weight decay) with Ray Tune + Optuna."""
    from gerne_ray.tuning import tune

    print_tune_result(tune(_spec_arg(args.spec), args.set))
    return 0


def method_table() -> list[dict]:
    """Every registered method: what it does, what it needs, its hyperparameters and search ranges."""
    from gerne_ray import methods

    out = []
    for name in methods.names():
        cls = methods.get(name)
        params = [{"name": k, "default": f.default, "description": f.description or ""}
                  for k, f in cls.Params.model_fields.items() if k != "name"]
        needs = [label for flag, label in (
            (cls.uses_groups, "training groups (pseudo-groups with unknown attributes)"),
            (cls.needs_train_attributes, "training attribute labels"),
            (cls.needs_val_attributes, "validation attribute labels")) if flag]
        out.append({"name": name, "summary": cls.summary, "needs": needs, "params": params,
                    "search": cls.describe_search()})
    return out


def cmd_methods(args: argparse.Namespace) -> int:
    """List every method with its hyperparameters, defaults and search ranges."""
    table = method_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for m in table:
        print(f"{m['name']}: {m['summary']}")
        if m["needs"]:
            print(f"  needs: {'; '.join(m['needs'])}")
        for p in m["params"]:
            searched = m["search"].get(p["name"])
            about = f"  ({p['description']})" if p["description"] else ""
            print(f"  {p['name']} = {p['default']!r}{about}"
                  + (f"\n      searched: {searched}" if searched else ""))
        if not m["search"]:
            print("  searched: nothing of its own (search.space's lr and weight_decay apply to every method)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the job spec's JSON Schema (gerne-ray.schema.json holds it for editors)."""
    from gerne_ray.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Search every method with the same budget, retrain the best of each with new seeds, compare."""
    from gerne_ray.compare import compare

    result = compare(_spec_arg(args.spec), args.methods, args.set)
    print(f"\n{'method':10s} {'test GBA':>16s} {'test WGA':>16s} {'val metric':>16s}")
    for method, s in result.summary().items():
        metric = result.rows[0]["selection_metric"]
        cells = [s[k] for k in ("test_gba", "test_wga", metric)]
        shown = ["" if c is None else f"{100 * c[0]:.2f} +- {100 * c[1]:.2f}" for c in cells]
        print(f"{method:10s} " + " ".join(f"{c:>16s}" for c in shown))
    print(f"results in {result.location}/ (compare.md, compare.parquet, plots/compare.png)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit `gerne-ray tune SPEC` to a Ray cluster as a job."""
    from gerne_ray.submit import submit

    _, status = submit(args.spec, args.address, args.wait, args.set, args.working_dir)
    return 0 if status in (None, "SUCCEEDED") else 1


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted search from its run folder."""
    from gerne_ray.tuning import resume

    print_tune_result(resume(args.run_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render report.md, report.html and the plots of a finished search again."""
    from gerne_ray.report import TABLES, write_report
    from gerne_ray.storage import RunFolder

    folder = RunFolder.at(args.run_dir)
    folder.pull(*TABLES)
    path = write_report(folder.local)
    folder.push("report.md", "report.html", "plots")
    print(path if not folder.remote else f"{folder.location}/report.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train ERM and resampling, tune GERNE, on colored_digits, and compare them."""
    from gerne_ray.demo import run_demo

    run_demo(storage=args.storage, seeds=args.seeds, trials=args.trials)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the gerne-ray command."""
    parser = argparse.ArgumentParser(prog="gerne-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    def spec_command(name: str, func, help_text: str, **spec_arg) -> argparse.ArgumentParser:
        """A subcommand taking spec file(s) and --set overrides."""
        p = sub.add_parser(name, help=help_text)
        p.add_argument("specs" if spec_arg.get("nargs") else "spec", **spec_arg)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec value, e.g. --set method.beta=1.0 (repeatable)")
        p.set_defaults(func=func)
        return p

    spec_command("validate", cmd_validate, "validate job specs (and beta against the data's bounds)",
                 nargs="+")
    p = spec_command("bounds", cmd_bounds, "group table of the training split and beta's bounds")
    p.add_argument("--json", action="store_true",
                   help='print a JSON object (an unbounded end is the string "Infinity" or "-Infinity")')
    spec_command("train", cmd_train, "train one configuration")
    spec_command("tune", cmd_tune, "search beta inside its bounds with Ray Tune + Optuna",
                 help="a spec file, or env:NAME (JSON in that environment variable)")
    p = spec_command("compare", cmd_compare, "search several methods with the same budget and compare them",
                     help="a spec file, or env:NAME (JSON in that environment variable)")
    p.add_argument("--methods", required=True,
                   help="comma-separated methods, e.g. erm,resample,groupdro,jtt,lff,dfr,gerne")
    p = sub.add_parser("methods", help="list the methods, their hyperparameters and search ranges")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("schema", help="print the job spec's JSON Schema (for editors; gerne-ray.schema.json)")
    p.set_defaults(func=cmd_schema)
    p = spec_command("submit", cmd_submit, "submit a search to a Ray cluster (its job API)")
    p.add_argument("--address", default=None,
                   help="the cluster's job API, http://<head>:8265 (default: RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="follow the job's logs; exit with its status")
    p.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: .)")

    p = sub.add_parser("resume", help="continue an interrupted search: gerne-ray resume RUN_DIR")
    p.add_argument("run_dir", help="the search's run folder, <storage.path>/<name>")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("report", help="render report.md, report.html and plots of a finished search again")
    p.add_argument("run_dir", help="the search's run folder, <storage.path>/<name>")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="ERM vs resampling vs tuned GERNE on colored_digits, offline")
    p.add_argument("--storage", default="runs", help="folder for the runs (default: runs)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    p.add_argument("--trials", type=int, default=None, help="GERNE search trials (default: the spec's 12)")
    p.set_defaults(func=cmd_demo)
    return parser


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}
_RESUMES = "run the same command again: train and tune resume from their last checkpoint"


def os_error_line(err: OSError) -> str:
    """One line for a failed file-system operation: the path, what the system said, what to do."""
    what = err.strerror or str(err) or type(err).__name__
    code = errno.errorcode.get(err.errno) if isinstance(err.errno, int) else None
    where = f"{err.filename}: " if err.filename is not None else ""
    if err.errno in _NO_SPACE:
        fix = f"free space there (or set storage.path to another disk), then {_RESUMES}"
    elif err.errno == errno.EFBIG:
        fix = f"raise the file size limit (ulimit -f) or move storage.path elsewhere, then {_RESUMES}"
    elif err.errno in _NOT_ALLOWED:
        fix = "make that path writable for you (or set storage.path elsewhere), then run the command again"
    else:
        fix = "check that path and its file system, then run the command again"
    return " ".join(f"{where}{what}{f' ({code})' if code else ''}; {fix}".split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: every error prints one line on stderr, without a traceback.

    Exit codes: 2 for an error in what the user gave (a GerneError: spec, data, folder, options),
    1 when the machine fails the command (an OSError: disk full, no permission, a lost mount),
    130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except GerneError as err:
        print(f"gerne-ray: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system failed the command: not a usage error, so exit 1
        print(f"gerne-ray: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gerne-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
