"""Sweeps: a grid of runs, expanded from a ``SweepSpec`` and appended to a results file, resumably.

The grid is ``seeds × vary × optimizers × batch sizes × methods × (that method's tuning grid)``. A method's
tuning grid is the optimizer's learning-rate list, times its weight-decay list if the method trains with
weight decay, times any extra axes given for the method in ``grids`` (e.g. ``{"lawn": {"free_fraction":
[...]}}``; an axis is one list, or ``{optimizer: list}`` like ``lrs``). So every method of an optimizer
gets the same learning-rate grid and every weight-decay method the same weight-decay grid; each row records
its tuned axes (``tuned``) and the report shows each method's grid size. ``vary`` (``{field: [values]}``)
repeats the whole grid for each combination of values of other fields (e.g. ``normalization``): these are
not tuned, so each value is a setting of its own in the report. Seeds are the outer loop, so a sweep
stopped early has covered the whole grid for its first seeds.

``run_sweep`` drives a backend (``lawn.harness.parallel``: in this process, or a pool of local worker
processes; ``lawn.harness.ray_backend``: Ray tasks) and is the results file's only writer in its process.
Rows are the same whatever the backend (a run is a function of its config), only their order in the file
differs. Runs are claimed in the file's lock file, so two sweeps on one file share the grid safely.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from lawn.harness.checked import run_config
from lawn.harness.config import COMPARE_KEYS, RunConfig, coerce_field, load_mapping, parse_comparisons
from lawn.harness.methods import METHODS
from lawn.harness.results import ResultsFile

if TYPE_CHECKING:
    from lawn.harness.parallel import Backend

SWEPT = ("optimizer", "method", "batch_size", "lr", "weight_decay", "seed")


@dataclass(frozen=True)
class SweepSpec:
    """A grid of runs. ``lrs`` / ``weight_decays`` / each axis of ``grids``: one list for all optimizers, or
    ``{optimizer: list}`` (stored per optimizer: ``grids[method][field][optimizer]``)."""

    base: dict[str, Any] = field(default_factory=dict)
    optimizers: tuple[str, ...] = ("adam",)
    methods: tuple[str, ...] = ("plain", "wd", "lawn")
    batch_sizes: tuple[int, ...] = (128,)
    lrs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    weight_decays: dict[str, tuple[float, ...]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    grids: dict[str, dict[str, dict[str, tuple[Any, ...]]]] = field(default_factory=dict)
    vary: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        """Build and check a spec; errors name the offending key."""
        if not isinstance(data, dict):
            raise TypeError(f"sweep spec: expected a mapping, got {type(data).__name__}")
        known = {
            "base",
            "optimizers",
            "methods",
            "batch_sizes",
            "lrs",
            "weight_decays",
            "seeds",
            "grids",
            "vary",
            *COMPARE_KEYS,
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"sweep spec: unknown key(s) {unknown}; known keys: {sorted(known)}")
        parse_comparisons(data)  # [[compare]] tables are for `lawn report --spec`; checked here, before any run
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise TypeError("sweep spec: 'base' must be a mapping of run config fields")
        clash = sorted(set(base) & set(SWEPT))
        if clash:
            raise ValueError(f"sweep spec: base sets {clash}, which the sweep itself varies; remove them")
        run_config(base)  # field names and values
        optimizers = _names(data.get("optimizers", ["adam"]), "optimizers")
        methods = _names(data.get("methods", ["plain", "wd", "lawn"]), "methods")
        for m in methods:
            if m not in METHODS:
                raise ValueError(f"sweep spec: methods: unknown {m!r}; choose from {sorted(METHODS)}")
        wd_needed = any(METHODS[m].uses_weight_decay for m in methods)
        vary = data.get("vary", {})
        if not isinstance(vary, dict):
            raise TypeError("sweep spec: 'vary' must map a run config field to a list of values")
        for name in vary:
            if name in SWEPT or name in base:
                raise ValueError(f"sweep spec: vary.{name}: already set by the sweep or base")
        varied = {name: tuple(coerce_field(name, v) for v in _values(vs, f"vary.{name}")) for name, vs in vary.items()}
        grids = data.get("grids", {})
        if not isinstance(grids, dict):
            raise TypeError("sweep spec: 'grids' must map a method to {field: [values]}")
        checked: dict[str, dict[str, dict[str, tuple[Any, ...]]]] = {}
        for method, axes in grids.items():
            if method not in methods:
                raise ValueError(f"sweep spec: grids: method {method!r} is not in methods {list(methods)}")
            if not isinstance(axes, dict):
                raise TypeError(f"sweep spec: grids.{method} must map fields to lists of values")
            for name in axes:
                if name in SWEPT or name in base or name in varied:
                    raise ValueError(f"sweep spec: grids.{method}.{name}: already set by the sweep, base or vary")
            checked[method] = {
                name: _per_optimizer(values, f"grids.{method}.{name}", optimizers, name, required=True)
                for name, values in axes.items()
            }
        spec = cls(
            base=dict(base),
            optimizers=optimizers,
            methods=methods,
            batch_sizes=tuple(
                coerce_field("batch_size", v) for v in _values(data.get("batch_sizes", [128]), "batch_sizes")
            ),
            lrs=_per_optimizer(data.get("lrs"), "lrs", optimizers, "lr", required=True),
            weight_decays=_per_optimizer(
                data.get("weight_decays"), "weight_decays", optimizers, "weight_decay", wd_needed
            ),
            seeds=tuple(coerce_field("seed", v) for v in _values(data.get("seeds", [0, 1, 2]), "seeds")),
            grids=checked,
            vary=varied,
        )
        spec.expand()  # every run config of the grid is valid
        return spec

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        return cls.from_dict(load_mapping(path))

    def tuned_axes(self, optimizer: str, method: str) -> dict[str, tuple[Any, ...]]:
        """The tuning grid of ``method`` with ``optimizer``: axis name → values."""
        axes: dict[str, tuple[Any, ...]] = {"lr": self.lrs[optimizer]}
        if METHODS[method].uses_weight_decay:
            axes["weight_decay"] = self.weight_decays[optimizer]
        for name, per_optimizer in self.grids.get(method, {}).items():
            axes[name] = per_optimizer[optimizer]
        return axes

    def varied_settings(self) -> list[dict[str, Any]]:
        """Every combination of the ``vary`` values (one empty setting when nothing is varied)."""
        return [dict(zip(self.vary, values)) for values in itertools.product(*self.vary.values())]

    def expand(self) -> list[tuple[RunConfig, list[str]]]:
        """Every run of the grid in execution order, with the names of its tuned axes (no duplicates)."""
        runs: list[tuple[RunConfig, list[str]]] = []
        seen: set[str] = set()
        for seed, varied, optimizer, batch_size, method in itertools.product(
            self.seeds, self.varied_settings(), self.optimizers, self.batch_sizes, self.methods
        ):
            axes = self.tuned_axes(optimizer, method)
            for point in itertools.product(*axes.values()):
                fields = {**self.base, **varied}
                fields.update(optimizer=optimizer, method=method, batch_size=batch_size)
                fields.update(zip(axes, point))
                config = run_config({**fields, "seed": seed})
                if config.key() not in seen:
                    seen.add(config.key())
                    runs.append((config, list(axes)))
        return runs


def _names(value: Any, what: str) -> tuple[str, ...]:
    values = _values(value, what)
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"sweep spec: {what}: expected a list of names, got {value!r}")
    return tuple(values)


def _values(value: Any, what: str) -> list[Any]:
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"sweep spec: {what}: expected a non-empty list, got {value!r}")
    return list(value)


def _per_optimizer(
    value: Any, what: str, optimizers: tuple[str, ...], field_name: str, required: bool
) -> dict[str, tuple[Any, ...]]:
    if value is None:
        if required:
            raise ValueError(f"sweep spec: {what}: required (a list, or {{optimizer: list}})")
        return {}
    if isinstance(value, dict):
        missing = [o for o in optimizers if o not in value]
        if missing:
            raise ValueError(f"sweep spec: {what}: no list for optimizer(s) {missing}")
        extra = sorted(set(value) - set(optimizers))
        if extra:
            raise ValueError(f"sweep spec: {what}: optimizer(s) {extra} are not in optimizers")
        return {o: tuple(coerce_field(field_name, v) for v in _values(value[o], f"{what}.{o}")) for o in optimizers}
    values = tuple(coerce_field(field_name, v) for v in _values(value, what))
    return {o: values for o in optimizers}


@dataclass(frozen=True)
class SweepEvent:
    """What happened to one run: ``kind`` is ``"start"``, ``"done"``, ``"failed"`` or ``"skipped"`` (its row
    appeared, written by another sweep on the same file). ``finished``/``total`` count the grid's runs ended
    so far (present, done or failed); ``eta_s`` extrapolates this sweep's pace to the rest."""

    kind: str
    config: RunConfig
    where: str = ""
    row: dict[str, Any] | None = None
    error: str | None = None
    finished: int = 0
    total: int = 0
    eta_s: float | None = None


class SweepFailed(RuntimeError):
    """Some runs failed (all others ran and were written); rerunning the sweep retries exactly those."""

    def __init__(self, counts: dict[str, int], failures: list[tuple[RunConfig, str]]) -> None:
        self.counts = counts
        self.failures = failures
        super().__init__(f"{len(failures)} of {counts['total']} run(s) failed; rerun the sweep to retry them")


def run_sweep(
    spec: SweepSpec,
    results: str | Path,
    *,
    device: str | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    backend: Backend | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    poll_s: float = 1.0,
) -> dict[str, int]:
    """Run every configuration of ``spec`` whose key is not yet in ``results``; append each row as it ends.

    ``backend`` trains the runs (default :class:`~lawn.harness.parallel.InProcess`: one at a time, here;
    ``LocalPool(jobs)``: worker processes; ``RayBackend``: Ray tasks); this process is the only writer. Each
    run is claimed in ``results``'s lock file before it starts, so sweeps sharing the file split the grid
    and never train a run twice; runs another sweep holds are waited for (polled every ``poll_s`` s) and
    taken over if it gives them up without a row. ``device`` overrides the configs' device (not part of a
    run's key). Returns counts of runs ``done`` now, ``skipped`` (their row came from elsewhere) and
    ``total``. A run that fails (an exception, a dead worker) fails alone: the others go on, then
    :class:`SweepFailed` is raised with the counts and the failures. On an interrupt (``KeyboardInterrupt``)
    the workers are ended and every row written so far stays; rerunning resumes.
    """
    from lawn.harness.parallel import InProcess

    runs = spec.expand()
    book = ResultsFile(results)
    backend = backend if backend is not None else InProcess(progress=progress)
    present = book.written()
    pending = deque((i, c, t) for i, (c, t) in enumerate(runs) if c.key() not in present)
    total, skipped, done = len(runs), len(runs) - len(pending), 0
    elsewhere: list[tuple[int, RunConfig, list[str]]] = []  # claimed by another sweep on this file
    in_flight: dict[int, tuple[RunConfig, list[str]]] = {}
    failures: list[tuple[RunConfig, str]] = []
    bar = tqdm(total=total, initial=skipped, desc="sweep", disable=not progress, unit="run", dynamic_ncols=True)
    started = time.monotonic()

    def emit(kind: str, config: RunConfig, **extra: Any) -> None:
        finished = skipped + done + len(failures)
        ran = done + len(failures)
        eta = (time.monotonic() - started) / ran * (total - finished) if ran else None
        if kind in ("done", "failed", "skipped"):
            bar.update(1)
            bar.set_postfix(running=len(in_flight), failed=len(failures), refresh=False)
        if kind == "failed" and progress:
            bar.write(f"sweep: run failed: {_label(config)}: {extra['error'].splitlines()[0]}")
        if on_event is not None:
            on_event(SweepEvent(kind, config, finished=finished, total=total, eta_s=eta, **extra))

    def recheck_elsewhere() -> None:
        nonlocal skipped
        keys = book.written()
        for item in list(elsewhere):
            if item[1].key() in keys:
                elsewhere.remove(item)
                skipped += 1
                emit("skipped", item[1])
            elif book.claim(item[1].key()):  # given up without a row (failed there, or that sweep died)
                book.release(item[1].key())
                elsewhere.remove(item)
                pending.append(item)

    cancel = True
    try:
        book.open()
        while pending or in_flight or elsewhere:
            while pending and backend.capacity() > 0:
                tag, config, tuned = pending.popleft()
                key = config.key()
                if not book.claim(key):
                    elsewhere.append((tag, config, tuned))
                    continue
                if key in book.written():  # written by another sweep since we read the file
                    book.release(key)
                    skipped += 1
                    emit("skipped", config)
                    continue
                if device is not None:
                    config = config.replace(device=device)
                in_flight[tag] = (config, tuned)
                emit("start", config, where=backend.submit(tag, config))
            if in_flight:
                outcomes = backend.wait(poll_s if elsewhere else None)
            else:
                outcomes = []
                time.sleep(poll_s)  # only runs held by another sweep are left
            for outcome in outcomes:
                config, tuned = in_flight.pop(outcome.tag)
                key = config.key()
                if outcome.row is not None:
                    row = {**outcome.row, "tuned": tuned}
                    book.append(row)
                    book.release(key)
                    done += 1
                    emit("done", config, row=row)
                    if on_row is not None:
                        on_row(row)
                else:
                    book.release(key)
                    failures.append((config, outcome.error or "unknown error"))
                    emit("failed", config, error=failures[-1][1])
            if elsewhere:
                recheck_elsewhere()
        cancel = False
    finally:
        backend.close(cancel=cancel)
        book.close()
        bar.close()
    counts = {"done": done, "skipped": skipped, "total": total}
    if failures:
        raise SweepFailed({**counts, "failed": len(failures)}, failures)
    return counts


def _label(config: RunConfig) -> str:
    tuned = f"{config.optimizer}/{config.method} bs={config.batch_size} lr={config.lr:g} seed={config.seed}"
    return f"{tuned} key={config.key()}"
