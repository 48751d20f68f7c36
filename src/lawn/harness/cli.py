"""The ``lawn`` command: ``demo``, ``run``, ``sweep`` and ``report``.

Bad options, files or config values end the command with ``lawn: error: …`` naming the culprit (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
RUN_FLAGS = {
    "dataset": str,
    "data_dir": str,
    "model": str,
    "optimizer": str,
    "method": str,
    "lr": float,
    "weight_decay": float,
    "batch_size": int,
    "epochs": int,
    "seed": int,
}


def _add_runtime(p: argparse.ArgumentParser, threads: int | None = None) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (CUDA if present; default)")
    p.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="CPU threads for torch (default: %(default)s = torch's choice); 1 is fastest on a busy machine",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from lawn.harness.demo import DATASETS as DEMO_SETS
    from lawn.harness.demo import DEFAULTS

    parser = argparse.ArgumentParser(
        prog="lawn", description="Train models with and without LAWN and report how they compare."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,run,sweep,report}")

    demo = sub.add_parser("demo", help="Adam vs Adam+LAWN at a small and a large batch size (minutes on CPU)")
    demo.add_argument("--out", default="lawn-demo", help="output directory (results, report, plots)")
    demo.add_argument("--dataset", default="auto", choices=DEMO_SETS, help="auto: Fashion-MNIST if installed")
    demo.add_argument("--data-dir", help="directory of the data set's files")
    demo.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    demo.add_argument("--seeds", type=int, default=DEFAULTS["seeds"], help="number of seeds")
    demo.add_argument("--batch-sizes", type=int, nargs="+", default=DEFAULTS["batch_sizes"])
    demo.add_argument("--lrs", type=float, nargs="+", default=DEFAULTS["lrs"], help="learning-rate grid")
    demo.add_argument("--train-limit", type=int, default=DEFAULTS["train_limit"], help="training pool size")
    demo.add_argument("--test-limit", type=int, default=DEFAULTS["test_limit"])
    _add_runtime(demo, threads=1)

    run = sub.add_parser("run", help="train one configuration")
    run.add_argument("--config", help="a run config file (.json or .toml)")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="set a config field")
    for name, kind in RUN_FLAGS.items():
        run.add_argument("--" + name.replace("_", "-"), type=kind, help=f"config field {name}")
    run.add_argument("--results", help="append the result row to this JSONL file")
    run.add_argument("--json", help="write the full result row (with per-epoch history) to this file")
    _add_runtime(run)

    sweep = sub.add_parser("sweep", help="run a grid of configurations (resumable)")
    sweep.add_argument("spec", help="sweep spec file (.json or .toml)")
    sweep.add_argument("--results", required=True, help="JSONL file the rows are appended to")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base field")
    sweep.add_argument("--data-dir", help="override the base data_dir")
    sweep.add_argument("--dry-run", action="store_true", help="list the grid, run nothing")
    _add_runtime(sweep)

    report = sub.add_parser("report", help="markdown table and plots from result files")
    report.add_argument("results", nargs="+", help="JSONL results file(s)")
    report.add_argument("--out", default="lawn-report", help="output directory")
    report.add_argument(
        "--split",
        action="append",
        default=[],
        metavar="FIELD",
        help="report each value of a tuned FIELD separately instead of selecting over it (ablations)",
    )
    report.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep only rows whose config FIELD equals VALUE (read as JSON if it parses)",
    )
    return parser


def _runtime(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and turn ``--device`` into a concrete device name."""
    import torch

    from lawn.harness.train import resolve_device

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return str(resolve_device(args.device))


def _print_history(row: dict[str, Any]) -> None:
    metric = row["metric"]
    print(
        f"{'epoch':>5} {'lr':>9} {'phase':>11} {'train_loss':>10} {'val_' + metric:>12} "
        f"{'test_' + metric:>13} {'logit_norm':>10} {'tail_norm':>9} {'weight_norm':>11}"
    )

    def f(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for h in row["history"]:
        print(
            f"{h['epoch']:>5} {h['lr']:>9.3g} {h['phase'] or '–':>11} {f(h['train_loss'], '.4f'):>10} "
            f"{f(h['val_metric'], '.4f'):>12} {f(h['test_metric'], '.4f'):>13} "
            f"{f(h['logit_norm'], '.3f'):>10} {f(h['constrained_norm'], '.3f'):>9} "
            f"{f(h['weight_norm'], '.2f'):>11}"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from lawn.harness.config import RunConfig, load_mapping, parse_assignment
    from lawn.harness.results import append_row, encode_row
    from lawn.harness.train import train

    fields: dict[str, Any] = load_mapping(args.config) if args.config else {}
    for name in RUN_FLAGS:
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    fields.update(parse_assignment(text) for text in args.set)
    fields["device"] = _runtime(args)
    config = RunConfig.from_dict(fields)
    row = train(config, progress=not args.no_progress)
    row["tuned"] = ["lr", "weight_decay"]
    _print_history(row)
    if row["diverged"]:
        print(f"diverged (training loss not finite) after {row['epochs_run']} epoch(s)")
    else:
        print(
            f"final: val {row['metric']} {row['val_metric']:.4f}, "
            f"test {row['metric']} {row['test_metric']:.4f}"
        )
    print(f"constrained (final homogeneous) weights: {', '.join(row['constrained']) or 'none'}")
    if args.results:
        append_row(args.results, row)
        print(f"appended to {args.results}")
    if args.json:
        Path(args.json).write_bytes(encode_row(row))
        print(f"wrote {args.json}")
    return 0


def _sweep_spec(args: argparse.Namespace) -> Any:
    from lawn.harness.config import load_mapping, parse_assignment
    from lawn.harness.sweep import SweepSpec

    data = load_mapping(args.spec)
    overrides = dict(parse_assignment(text) for text in args.set)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if overrides:
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise TypeError(f"{args.spec}: 'base' must be a mapping of run config fields")
        data = {**data, "base": {**base, **overrides}}
    try:
        return SweepSpec.from_dict(data)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{args.spec}: {err}") from err


def cmd_sweep(args: argparse.Namespace) -> int:
    from lawn.harness.results import completed_keys
    from lawn.harness.sweep import run_sweep

    spec = _sweep_spec(args)
    runs = spec.expand()
    if args.dry_run:
        done = completed_keys(args.results) if Path(args.results).exists() else set()
        print(f"{len(runs)} runs, {sum(c.key() in done for c, _ in runs)} already in {args.results}")
        if spec.vary:
            varied = " × ".join(f"{k}{list(v)}" for k, v in spec.vary.items())
            print(f"  each grid below is run for every combination of {varied}")
        for optimizer in spec.optimizers:
            for method in spec.methods:
                axes = spec.tuned_axes(optimizer, method)
                size = 1
                for values in axes.values():
                    size *= len(values)
                grid = " × ".join(f"{k}{list(v)}" for k, v in axes.items())
                print(f"  {optimizer}/{method}: {size} grid points: {grid}")
        return 0
    device = _runtime(args)
    counts = run_sweep(spec, args.results, device=device, progress=not args.no_progress)
    print(
        f"sweep: {counts['done']} run(s) done now, {counts['skipped']} already in {args.results}, "
        f"{counts['total']} in the grid"
    )
    print(f"next: lawn report {args.results} --out <dir>")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lawn.harness.report import read_reported_rows, write_report

    rows = _only(read_reported_rows(args.results), args.only)
    from lawn.harness.selection import DEFAULT_TUNED

    for row in rows:  # a split field becomes part of the setting, so each of its values is reported
        row["tuned"] = [t for t in row.get("tuned") or DEFAULT_TUNED if t not in args.split]
    written = write_report(rows, args.out, sources=list(args.results))
    print(written[0].read_text())
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


def _only(rows: list[dict[str, Any]], conditions: list[str]) -> list[dict[str, Any]]:
    """The rows whose config matches every ``FIELD=VALUE`` of ``--only``."""
    import dataclasses

    from lawn.harness.config import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for condition in conditions:
        name, sep, text = condition.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--only {condition!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        rows = [row for row in rows if row["config"].get(name) == value]
    return rows


def cmd_demo(args: argparse.Namespace) -> int:
    from lawn.harness.demo import demo_spec, pick_dataset
    from lawn.harness.report import write_report
    from lawn.harness.results import read_rows
    from lawn.harness.sweep import run_sweep

    for name in ("epochs", "seeds", "train_limit", "test_limit"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    dataset, data_dir, notice = pick_dataset(args.dataset, args.data_dir)
    if notice:
        print(notice)
    spec = demo_spec(
        dataset,
        data_dir,
        epochs=args.epochs,
        seeds=args.seeds,
        batch_sizes=args.batch_sizes,
        lrs=args.lrs,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )
    device = _runtime(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    print(
        f"demo: {dataset}, BN MLP, Adam vs Adam+LAWN, batch sizes {args.batch_sizes}, {args.epochs} epochs, "
        f"lr grid {args.lrs} (sqrt scaling from batch 128), {args.seeds} seed(s), device {device}"
    )
    counts = run_sweep(spec, results, device=device, progress=not args.no_progress)
    print(f"{counts['done']} run(s) trained, {counts['skipped']} reused from {results}")
    keys = {config.key() for config, _ in spec.expand()}  # this demo's runs, even if the file holds others
    written = write_report([r for r in read_rows(results) if r["key"] in keys], out, sources=[str(results)])
    print(written[0].read_text())
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "sweep": cmd_sweep, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, json.JSONDecodeError) as err:
        print(f"lawn {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume" if args.command in ("sweep", "demo") else ""
        print(f"lawn {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
