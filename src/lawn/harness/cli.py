"""The ``lawn`` command: ``demo``, ``run``, ``sweep``, ``lottery`` and ``report``.

Bad options, files or config values end the command with ``lawn: error: …`` naming the culprit (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
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


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N, mps or auto (default: auto = CUDA if present, else CPU)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: 1, the fastest for the harness's small models on a shared or busy "
        "machine; torch's own default of one thread per core can make them 20-50x slower there)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def _add_log_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-dir",
        metavar="DIR",
        help="also write each run's per-epoch curves as TensorBoard events into DIR/<row key> (needs the "
        "tensorboard extra; view with: tensorboard --logdir DIR)",
    )


def _add_jobs(p: argparse.ArgumentParser, ray: bool = False) -> None:
    from lawn.harness.parallel import JOBS_CAP

    extra = "; with --ray: at most N in flight (default: what the cluster fits)" if ray else ""
    p.add_argument(
        "--jobs",
        type=int,
        help=f"runs trained at once, in local worker processes (default: one per CPU core, at most {JOBS_CAP}; "
        f"on CUDA one per visible GPU; 1 trains in this process){extra}",
    )


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base field")


def _config_fields_epilog() -> str:
    """The ``--set`` fields with their defaults, and the registered names of the name-valued fields."""
    import dataclasses

    from lawn.harness import datasets, methods, models, normalization, optimizers
    from lawn.harness.config import RunConfig

    choices = {
        "dataset": sorted(datasets.DATASETS),
        "model": ["auto", *sorted(models.MODELS)],
        "optimizer": sorted(optimizers.OPTIMIZERS),
        "method": sorted(methods.METHODS),
        "normalization": list(normalization.NORMALIZATIONS),
    }
    lines = ["run config fields (--set FIELD=VALUE, or in --config / a sweep's [base]), with defaults:"]
    for f in dataclasses.fields(RunConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        extra = f"  one of: {', '.join(choices[f.name])}" if f.name in choices else ""
        lines.append(f"  {f.name} = {json.dumps(default)}{extra}")
    lines.append("docs: docs/harness.md")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from lawn.harness.demo import DATASETS as DEMO_SETS
    from lawn.harness.demo import DEFAULTS, default_epochs_text

    parser = argparse.ArgumentParser(
        prog="lawn", description="Train models with and without LAWN and report how they compare."
    )
    parser.add_argument("--version", action="version", version=f"lawn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,run,sweep,lottery,report}")

    demo = sub.add_parser("demo", help="Adam vs Adam+LAWN at a small and a large batch size (minutes on CPU)")
    demo.add_argument(
        "--out", default="lawn-demo", help="output directory (results, report, plots; default: %(default)s)"
    )
    demo.add_argument(
        "--dataset",
        default="auto",
        type=_demo_dataset,
        help=f"one of {', '.join(DEMO_SETS)} (default: auto = Fashion-MNIST if its files are installed, else MNIST-1D)",
    )
    demo.add_argument("--data-dir", help="directory of the data set's IDX files (default: the Debian package's)")
    demo.add_argument("--epochs", type=int, help=f"epochs per run (default: {default_epochs_text()})")
    demo.add_argument("--seeds", type=int, default=DEFAULTS["seeds"], help="number of seeds (default: %(default)s)")
    demo.add_argument(
        "--batch-sizes", type=int, nargs="+", default=DEFAULTS["batch_sizes"], help="(default: %(default)s)"
    )
    demo.add_argument(
        "--lrs", type=float, nargs="+", default=DEFAULTS["lrs"], help="learning-rate grid (default: %(default)s)"
    )
    demo.add_argument("--train-limit", type=int, help="training pool size (default: 10000 on image data sets)")
    demo.add_argument("--test-limit", type=int, help="test examples (default: 5000 on image data sets)")
    _add_jobs(demo)
    _add_log_dir(demo)
    _add_runtime(demo)

    fields_epilog = _config_fields_epilog()
    run = sub.add_parser(
        "run",
        help="train one configuration",
        epilog=fields_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", help="a run config file (.json or .toml)")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="set a config field (see below)")
    for name, kind in RUN_FLAGS.items():
        run.add_argument("--" + name.replace("_", "-"), type=kind, help=f"config field {name} (see below)")
    run.add_argument("--results", help="append the result row to this JSONL file")
    run.add_argument("--json", help="write the full result row (with per-epoch history) to this file")
    _add_log_dir(run)
    _add_runtime(run)

    sweep = sub.add_parser(
        "sweep",
        help="run a grid of configurations (resumable)",
        epilog=fields_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("spec", help="sweep spec file (.json or .toml)")
    sweep.add_argument("--results", required=True, help="JSONL file the rows are appended to")
    _add_overrides(sweep)
    sweep.add_argument("--data-dir", help="override the base data_dir")
    sweep.add_argument("--dry-run", action="store_true", help="list the grid, run nothing")
    sweep.add_argument(
        "--seeds",
        help="comma-separated seeds instead of the spec's (e.g. a pilot's 0, or fresh seeds 1,2,3,4,5)",
    )
    sweep.add_argument(
        "--pilot",
        nargs="+",
        metavar="PILOT_ROWS",
        help="run only the grid point each setting's pilot rows selected on validation (fresh seeds at the "
        "pilot's choice; the verdicts then pair them: lawn report RESULTS --pilot PILOT_ROWS --spec ...)",
    )
    _add_jobs(sweep, ray=True)
    sweep.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray: no ADDRESS = $RAY_ADDRESS or a new local instance; 'auto' or ray://host:10001 = a cluster",
    )
    sweep.add_argument("--cpus-per-run", type=float, default=1.0, help="with --ray: CPUs each run requests")
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="with --ray: GPUs each run requests (0.25)")
    _add_log_dir(sweep)
    _add_runtime(sweep)

    lottery = sub.add_parser(
        "lottery", help="winning ticket vs random re-init vs prune & fine-tune at equal epochs (resumable)"
    )
    lottery.add_argument("spec", help="lottery spec file (.json or .toml); see docs/sweeps/study_lottery.toml")
    lottery.add_argument("--results", required=True, help="JSONL file the rows are appended to")
    lottery.add_argument(
        "--max-points",
        type=int,
        metavar="N",
        help="stop after training N (learning rate, seed) points here, so a sitting ends on a point boundary "
        "(default: every point); rerun the same command to go on",
    )
    _add_overrides(lottery)
    _add_log_dir(lottery)
    _add_runtime(lottery)

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
    report.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="SPEC",
        help="sweep or lottery spec whose [[compare]] tables to decide (repeat for a study of several specs): "
        "writes verdicts.json and a verdict table",
    )
    report.add_argument(
        "--pilot",
        action="append",
        default=[],
        metavar="PILOT_ROWS",
        help="with --spec: select the fields the pilot varied on these rows, then pair RESULTS at the choice",
    )
    report.add_argument("--no-progress", action="store_true", help="accepted for symmetry; report shows no bars")
    return parser


def _version() -> str:
    import lawn

    return lawn.__version__


def _demo_dataset(text: str) -> str:
    """``--dataset`` of the demo: the hyphenated spelling (``fashion-mnist``) is accepted too."""
    from lawn.harness.demo import DATASETS as DEMO_SETS

    name = text.replace("-", "_")
    if name not in DEMO_SETS:
        from lawn.harness.config import did_you_mean

        raise argparse.ArgumentTypeError(
            f"unknown data set {text!r}{did_you_mean(name, DEMO_SETS)}; choose from {', '.join(DEMO_SETS)}"
        )
    return name


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag}: must be >= 1, got {value}")


def _output_file(flag: str, path: str | None, *, folder_must_exist: bool = False) -> None:
    """Refuse, before anything trains, an output file ``path`` that cannot be written: a folder, under a file,
    or (``folder_must_exist``) in a folder that does not exist."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name, e.g. {target / 'results.jsonl'}")
    _output_dir(flag, str(target.parent))
    if folder_must_exist and not target.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {target.parent} does not exist; create it first")


def _output_dir(flag: str, path: str) -> None:
    """Refuse, before anything is written, an output folder ``path`` that is a file or lies under one."""
    for ancestor in (Path(path), *Path(path).parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{flag} {path}: {ancestor} is a file, not a folder; choose another path")
            return


def _runtime(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and turn ``--device`` into a concrete device name."""
    import torch

    from lawn.harness.train import resolve_device

    _at_least_one("--threads", args.threads)
    torch.set_num_threads(args.threads)
    device = args.device
    if device not in DEVICES[:-1] and not (device.startswith("cuda:") and device[5:].isdigit()):
        from lawn.harness.config import did_you_mean

        raise ValueError(
            f"--device: unknown {device!r}{did_you_mean(device, DEVICES)}; choose from {', '.join(DEVICES)}"
        )
    return str(resolve_device(device))


def _log_dir(args: argparse.Namespace) -> Path | None:
    """``--log-dir`` as a path, after checking that TensorBoard is installed (before anything trains)."""
    if not args.log_dir:
        return None
    from lawn.harness.tensorboard import require

    require()
    return Path(args.log_dir)


def _events_of_present_rows(log_dir: Path | None, results: str | Path, keys: set[str]) -> None:
    """TensorBoard events for the rows of ``keys`` already in ``results`` that have none yet (a resumed run)."""
    if log_dir is None or not Path(results).is_file():
        return
    from lawn.harness.results import read_rows
    from lawn.harness.tensorboard import write_missing

    write_missing(log_dir, [row for row in read_rows(results) if row["key"] in keys])


def _row_events(log_dir: Path | None) -> Any:
    """The ``on_row`` callback that writes a finished row's TensorBoard events (``None`` without ``--log-dir``)."""
    if log_dir is None:
        return None
    from lawn.harness.tensorboard import write_run_events

    return lambda row: write_run_events(log_dir, row)


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
    from lawn.harness.checked import run_config
    from lawn.harness.config import load_mapping, parse_assignment
    from lawn.harness.results import append_row, encode_row
    from lawn.harness.train import train

    fields: dict[str, Any] = load_mapping(args.config) if args.config else {}
    for name in RUN_FLAGS:
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    fields.update(parse_assignment(text) for text in args.set)
    fields["device"] = _runtime(args)
    config = run_config(fields)
    _output_file("--results", args.results)
    _output_file("--json", args.json, folder_must_exist=True)
    log_dir = _log_dir(args)
    print(_describe(config))
    row = train(config, progress=not args.no_progress)
    row["tuned"] = ["lr", "weight_decay"]
    _print_history(row)
    if row["diverged"]:
        print(f"diverged (training loss not finite) after {row['epochs_run']} epoch(s)")
    else:
        print(f"final: val {row['metric']} {row['val_metric']:.4f}, test {row['metric']} {row['test_metric']:.4f}")
    print(f"constrained (final homogeneous) weights: {', '.join(row['constrained']) or 'none'}")
    if args.results:
        append_row(args.results, row)
        print(f"appended to {args.results}")
    if args.json:
        Path(args.json).write_bytes(encode_row(row))
        print(f"wrote {args.json}")
    if log_dir is not None:
        from lawn.harness.tensorboard import write_run_events

        print(f"TensorBoard events: {write_run_events(log_dir, row)} (tensorboard --logdir {log_dir})")
    return 0


def _training_examples(config: Any) -> int:
    """The size of ``config``'s training split (its data set loaded here, on the CPU)."""
    import torch

    from lawn.harness.datasets import load_data
    from lawn.harness.tasks import make_task

    return make_task(load_data(config), torch.device("cpu"), config.negatives_per_positive).train_size


def _describe(config: Any) -> str:
    """One paragraph: the resolved config and, for LAWN, when it will switch."""
    from lawn.harness.methods import free_steps
    from lawn.harness.schedule import scaled_lr
    from lawn.harness.tasks import batch_starts

    examples = _training_examples(config)
    per_epoch = len(batch_starts(examples, config.batch_size))
    steps = per_epoch * config.epochs
    lr = f"lr {scaled_lr(config):g}"
    if config.lr_scaling != "none":
        lr += f" ({config.lr_scaling} scaling of {config.lr:g} from batch {config.base_batch_size})"
    batch = f"batch {config.batch_size}"
    if config.batch_size >= examples:
        batch += f" (not less than the {examples} training examples: every step is full-batch, 1 per epoch)"
    text = (
        f"run: {config.dataset} ({examples} training examples), model {config.model} (width "
        f"{config.width}), {config.optimizer} + {config.method}, {lr}, {batch}, {config.epochs} epochs = "
        f"{steps} steps, {config.schedule} schedule, seed {config.seed}, device {config.device}"
    )
    if config.method == "lawn":
        text += f"; LAWN switches after step {free_steps(config, steps)} (free_fraction {config.free_fraction:g})"
    return text


def _spec(args: argparse.Namespace, cls: Any, extra: dict[str, Any] | None = None) -> Any:
    """``cls.from_dict`` of the spec file with ``--set`` (and ``extra``) overriding its base; errors name the file."""
    from lawn.harness.config import load_mapping, parse_assignment

    data = load_mapping(args.spec)
    overrides = dict(parse_assignment(text) for text in args.set)
    overrides.update(extra or {})
    if overrides:
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise TypeError(f"{args.spec}: 'base' must be a mapping of run config fields")
        data = {**data, "base": {**base, **overrides}}
    try:
        return cls.from_dict(data)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{args.spec}: {err}") from err


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 1,2,3,4,5, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds: expected distinct integers >= 0, got {text!r}")
    return seeds


def _print_dry_run(spec: Any, results: str, device: str, workers: int) -> None:
    from lawn.harness.cost_estimate import estimate_cost
    from lawn.harness.pilot import PilotSelected
    from lawn.harness.results import read_rows

    runs = spec.expand()
    written = read_rows(results) if Path(results).is_file() else []
    done = {row["key"] for row in written}
    pending = [config.to_dict() for config, _ in runs if config.key() not in done]
    print(f"{len(runs)} runs, {len(runs) - len(pending)} already in {results}")
    timed = written + (spec.pilot_rows if isinstance(spec, PilotSelected) else [])
    if pending:
        print(estimate_cost(pending, timed, device).describe(workers))
    if isinstance(spec, PilotSelected):
        for config, tuned in runs:
            rest = ", ".join(f"{k}={getattr(config, k)}" for k in tuned if k != "lr")
            print(f"  {_run_label(config)}" + (f" {rest}" if rest else ""))
        return
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


def _print_failures(command: str, failures: list[tuple[Any, str]]) -> None:
    print(f"{command}: {len(failures)} run(s) failed (their rows are not written):", file=sys.stderr)
    for config, error in failures:
        print(f"  {_run_label(config)}: {error.splitlines()[0]}", file=sys.stderr)


def cmd_sweep(args: argparse.Namespace) -> int:
    from lawn.harness.sweep import SweepFailed, SweepSpec, run_sweep

    _output_file("--results", args.results)
    extra = {"data_dir": args.data_dir} if args.data_dir else None
    spec = _spec(args, SweepSpec, extra)
    if args.seeds is not None:  # an empty --seeds (an unset shell variable) is an error, not the spec's seeds
        spec = dataclasses.replace(spec, seeds=_seed_list(args.seeds))
    if args.pilot:
        from lawn.harness.pilot import PilotSelected
        from lawn.harness.report import read_reported_rows

        spec = PilotSelected(spec, read_reported_rows(args.pilot))
        for line in spec.edges:  # the verdicts will flag these; a study's bracketing rule extends the grid first
            print(f"lawn sweep: warning: the pilot's choice for {line}", file=sys.stderr)
    if args.dry_run:
        device = _runtime(args)
        _print_dry_run(spec, args.results, device, args.jobs or _local_backend_jobs(device))
        return 0
    log_dir = _log_dir(args)
    if args.ray is None:  # local runs read the files here; a Ray cluster's nodes may hold data this one lacks
        from lawn.harness.datasets import check_files
        from lawn.harness.results import completed_keys

        done = completed_keys(args.results)  # a finished sweep needs no data
        for config in {(c.dataset, c.data_dir): c for c, _ in spec.expand() if c.key() not in done}.values():
            check_files(config)
    backend, device = _sweep_backend(args)
    _events_of_present_rows(log_dir, args.results, {config.key() for config, _ in spec.expand()})
    on_event = _log_event if args.no_progress else None
    try:
        counts = run_sweep(
            spec,
            args.results,
            device=device,
            progress=not args.no_progress,
            backend=backend,
            on_event=on_event,
            on_row=_row_events(log_dir),
        )
    except SweepFailed as failed:
        counts = failed.counts
        _print_failures("sweep", failed.failures)
    print(
        f"sweep: {counts['done']} run(s) done now, {counts['skipped']} already in {args.results}, "
        f"{counts['total']} in the grid"
    )
    if counts.get("failed"):
        print(f"sweep: {counts['failed']} failed; rerun the same command to retry them")
        return 1
    print(f"next: lawn report {args.results} --out <dir>")
    return 0


def cmd_lottery(args: argparse.Namespace) -> int:
    from lawn.harness.lottery import LotterySpec, run_lottery

    _output_file("--results", args.results)
    spec = _spec(args, LotterySpec)
    log_dir = _log_dir(args)
    device = _runtime(args)
    if args.max_points is not None and args.max_points < 1:
        raise ValueError(f"--max-points {args.max_points}: give a positive number of (learning rate, seed) points")
    counts = run_lottery(spec, args.results, device=device, progress=not args.no_progress, max_points=args.max_points)
    left = counts["total"] - counts["done"] - counts["skipped"]
    print(
        f"lottery: {counts['done']} row(s) done now, {counts['skipped']} already in {args.results}, "
        f"{counts['total']} in the study" + (f"; {left} left: rerun the same command to go on" if left else "")
    )
    if log_dir is not None and Path(args.results).is_file():
        from lawn.harness.results import read_rows
        from lawn.harness.tensorboard import write_missing

        rows = [row for row in read_rows(args.results) if row.get("experiment") == "lottery"]
        print(f"TensorBoard events: {write_missing(log_dir, rows)} run(s) written to {log_dir}")
    print(f"next: lawn report {args.results} --out <dir>")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler) stops a command like Ctrl-C: workers ended, finished rows kept, exit
    130 with a resume hint. Only the main thread can set a handler; elsewhere SIGTERM keeps its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _local_backend_jobs(device: str) -> int:
    """``--jobs`` when not given, on this machine."""
    import torch

    from lawn.harness.parallel import default_jobs

    return default_jobs(device, torch.cuda.device_count() if device == "cuda" else 0)


def _local_backend(args: argparse.Namespace, device: str) -> tuple[Any, int]:
    """``(backend, jobs)`` for ``--jobs`` on this machine: ``None`` (in this process) for one job, else a pool."""
    import torch

    from lawn.harness.parallel import LocalPool, worker_devices

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    jobs = args.jobs if args.jobs is not None else _local_backend_jobs(device)
    if jobs == 1:
        return None, 1
    return LocalPool(jobs, threads=args.threads, devices=worker_devices(device, jobs, gpus)), jobs


def _sweep_backend(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The backend of ``--jobs`` / ``--ray`` and the device to run on (``None``: the backend decides)."""
    import os

    _at_least_one("--jobs", args.jobs)
    _at_least_one("--threads", args.threads)
    if args.ray is None:
        if args.cpus_per_run != 1.0 or args.gpus_per_run != 0.0:
            raise ValueError("--cpus-per-run/--gpus-per-run: only with --ray (locally, use --jobs and --threads)")
        device = _runtime(args)
        return _local_backend(args, device)[0], device
    try:
        from lawn.harness.ray_backend import RayBackend
    except ImportError as err:
        raise ValueError(f"--ray: Ray is not installed ({err}); install it with pip install 'lawn[ray]'") from err
    fits = {"auto": True, "cpu": args.gpus_per_run == 0, "cuda": args.gpus_per_run > 0}
    if not fits.get(args.device, False):
        raise ValueError(
            f"--device {args.device} with --ray --gpus-per-run {args.gpus_per_run:g}: Ray gives each run its "
            "GPUs; use --gpus-per-run > 0 for CUDA runs and none for CPU runs (--device auto picks accordingly)"
        )
    local = (args.ray or os.environ.get("RAY_ADDRESS") or "local") == "local"
    init_options = {"num_cpus": max(1, round(args.jobs * args.cpus_per_run))} if local and args.jobs else {}
    backend = RayBackend(
        args.ray or None,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        threads=args.threads,
        max_in_flight=args.jobs,
        init_options=init_options,
    )
    return backend, None


def _run_label(config: Any) -> str:
    return f"{config.optimizer}/{config.method} bs={config.batch_size} lr={config.lr:g} seed={config.seed}"


def _log_event(event: Any) -> None:
    """One log line per run started or ended (``--no-progress``)."""
    label = _run_label(event.config)
    position = f"[{event.finished:>{len(str(event.total))}}/{event.total}]"
    eta = "" if event.eta_s is None else f", eta {_duration(event.eta_s)}"
    if event.kind == "start":
        print(f"{' ' * len(position)} start  {label} on {event.where}", flush=True)
    elif event.kind == "done":
        row = event.row
        result = "diverged" if row["diverged"] else f"val {row['val_metric']:.4f} test {row['test_metric']:.4f}"
        seconds = row.get("timing", {}).get("seconds", 0.0)
        print(f"{position} done   {label}: {result} ({seconds:.1f} s){eta}", flush=True)
    elif event.kind == "failed":
        print(f"{position} FAILED {label}: {event.error.splitlines()[0]}{eta}", flush=True)
    else:
        print(f"{position} skip   {label}: its row was written by another sweep{eta}", flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _show_written(written: list[Path]) -> None:
    """Print the report (the first file written) and the list of files."""
    print(written[0].read_text())
    print("wrote: " + ", ".join(str(p) for p in written))


def cmd_report(args: argparse.Namespace) -> int:
    from lawn.harness.report import STUDY_REPORTS, read_reported_rows, write_report

    if args.pilot and not args.spec:
        raise ValueError("--pilot selects for the comparisons of --spec SPEC; give the spec too")
    _output_dir("--out", args.out)
    if args.spec:
        from lawn.harness.verdicts import load_comparisons

        load_comparisons(*args.spec)  # a bad spec fails before anything is written
    rows = _only(read_reported_rows(args.results), args.only)
    pilot = _only(read_reported_rows(args.pilot), args.only) if args.pilot else []
    kinds = {row.get("experiment") for row in rows}
    for kind, (module, writer) in STUDY_REPORTS.items():
        if kind in kinds:
            if len(kinds) > 1:
                raise ValueError(f"report: the files mix {kind} rows with other rows; report them separately")
            write = getattr(importlib.import_module(module), writer)
            _show_written(write(rows, args.out, sources=list(args.results)) + _verdicts(args, rows, pilot))
            return 0
    from lawn.harness.selection import DEFAULT_TUNED

    for row in rows + pilot:  # a split field becomes part of the setting, so each of its values is reported
        row["tuned"] = [t for t in row.get("tuned") or DEFAULT_TUNED if t not in args.split]
    _show_written(write_report(rows, args.out, sources=list(args.results)) + _verdicts(args, rows, pilot))
    return 0


def _verdicts(args: argparse.Namespace, rows: list[dict[str, Any]], pilot: list[dict[str, Any]]) -> list[Path]:
    """With ``--spec``: verdicts.json and the verdict table of report.md (lawn.harness.verdicts)."""
    if not args.spec:
        return []
    from lawn.harness.verdicts import write_verdicts

    return write_verdicts(rows, args.spec, args.out, pilot)[:1]


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
    from lawn.harness.demo import demo_spec, full_batch_note, pick_dataset, report_with_reading, settings, verdict
    from lawn.harness.report import write_report
    from lawn.harness.results import read_rows
    from lawn.harness.selection import select
    from lawn.harness.sweep import SweepFailed, run_sweep

    _output_dir("--out", args.out)
    dataset, data_dir, notice = pick_dataset(args.dataset, args.data_dir)
    if notice:
        print(notice)
    chosen = settings(dataset)
    for name in ("epochs", "train_limit", "test_limit"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    for name in ("epochs", "seeds", "train_limit", "test_limit", "jobs"):
        _at_least_one(f"--{name.replace('_', '-')}", chosen.get(name, getattr(args, name, None)))
    spec = demo_spec(
        dataset,
        data_dir,
        epochs=chosen["epochs"],
        seeds=args.seeds,
        batch_sizes=args.batch_sizes,
        lrs=args.lrs,
        train_limit=chosen["train_limit"],
        test_limit=chosen["test_limit"],
        model=chosen["model"],
        data_options=chosen.get("data_options"),
    )
    log_dir = _log_dir(args)
    device = _runtime(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    backend, jobs = _local_backend(args, device)
    print(
        f"demo: {dataset}, model {chosen['model']}, Adam vs Adam+LAWN, batch sizes {args.batch_sizes}, "
        f"{chosen['epochs']} epochs, lr grid {args.lrs} (sqrt scaling from batch 128), {args.seeds} seed(s), "
        f"device {device}, {jobs} job(s) of {args.threads} thread(s)"
    )
    runs = spec.expand()
    note = full_batch_note(args.batch_sizes, _training_examples(runs[0][0]))
    if note:
        print(note)
    keys = {config.key() for config, _ in runs}  # this demo's runs, even if the file holds others
    _events_of_present_rows(log_dir, results, keys)
    try:
        counts = run_sweep(
            spec,
            results,
            device=device,
            progress=not args.no_progress,
            backend=backend,
            on_row=_row_events(log_dir),
        )
    except SweepFailed as failed:
        _print_failures("demo", failed.failures)
        print("demo: rerun the same command to retry them", file=sys.stderr)
        return 1
    print(f"{counts['done']} run(s) trained, {counts['skipped']} reused from {results}")
    rows = [r for r in read_rows(results) if r["key"] in keys]
    written = write_report(rows, out, sources=[str(results)])
    reading = verdict(select(rows), out)
    written[0].write_text(report_with_reading(written[0].read_text(), reading))
    print()
    print(reading)
    print()
    print("wrote: " + ", ".join(str(p) for p in written))
    if log_dir is not None:
        print(f"TensorBoard: tensorboard --logdir {log_dir}")
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "sweep": cmd_sweep, "lottery": cmd_lottery, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_interrupts():
            return COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError) as err:  # OSError: a path that cannot be read or written
        print(f"lawn {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = "; rerun the same command to resume" if args.command in ("sweep", "demo", "lottery") else ""
        print(f"lawn {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
