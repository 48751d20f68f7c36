"""``RunConfig``: everything that determines one training run, as plain data.

Configs are read from JSON or TOML (never evaluated as code), checked field by field, and identified by
``key()``: a hash of every field except ``device``. The key is what a sweep uses to skip runs whose row is
already in the results file.

Batch-size scaling rule (explicit, field ``lr_scaling``): the learning rate used is
``lr × (batch_size / base_batch_size)^p`` with ``p = 0`` (``"none"``), ``1`` (``"linear"``) or ``1/2``
(``"sqrt"``). LAWN's free phase lasts ``round(free_fraction × total_steps)`` optimizer steps.

Fields added after results files existed (``LATE_FIELDS``) are left out of ``key()`` while they hold their
default, so the keys of earlier runs stay valid (an earlier sweep resumes, its rows are reused), and
:func:`with_late_defaults` fills them in when an earlier row is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lawn._checks import is_int, is_number

LR_SCALINGS = ("none", "linear", "sqrt")
SCHEDULES = ("cosine", "step", "constant")
GRANULARITIES = ("tensor", "row")
KEY_IGNORES = ("device",)
LATE_FIELDS = (
    "normalization",
    "wrs_every",
    "ssi_lambda",
    "rewarmup_fraction",
    "auto_threshold",
    "auto_checks",
    "afan_layer",
    "afan_steps",
    "afan_step_size",
    "afan_eps",
    "afan_random_start",
    "afan_strengths",
    "afan_normalize",
    "afan_adv_weight",
    "afan_bn",
    "afan_direction",
    "eval_noise_std",
    "rewarmup_all",
    "eval_blur_sigma",
    "nested_arm",
    "nested_rate",
    "nested_kl_weight",
    "nested_fraction",
    "eval_width",
    "nested_order_lr_scale",
    "fused_base",
    "eval_every",
    "memory_format",
)
MEMORY_FORMATS = ("contiguous", "channels_last")
NESTED_ARMS = ("none", "narrow", "dropout", "learned")


@dataclass(frozen=True)
class RunConfig:
    """One training run. Every field is data; ``RunConfig.from_dict`` checks types and names."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    train_limit: int | None = None
    test_limit: int | None = None
    val_fraction: float = 0.1
    data_seed: int = 0
    # model
    model: str = "auto"
    width: int = 32
    normalization: str = "bn"  # "bn": the models as written; "mimicnorm": lawn.convert_to_mimicnorm
    # optimizer and method
    optimizer: str = "adam"
    method: str = "plain"
    lr: float = 1e-3
    lr_scaling: str = "none"
    base_batch_size: int = 128
    weight_decay: float = 0.0
    momentum: float = 0.9
    fused_base: bool = False  # torch's fused kernel for the base optimizer where it has one (sgd, adam, adamw)
    # schedule
    batch_size: int = 128
    epochs: int = 5
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    step_milestones: tuple[float, ...] = (0.5, 0.75)
    step_gamma: float = 0.1
    rewarmup_fraction: float = 0.0  # > 0: LAWN methods (only) get lawn.LAWNSchedule, see harness.schedule
    rewarmup_all: bool = False  # the same three-phase shape for methods without a switch (at free_fraction × T)
    # LAWN
    free_fraction: float = 0.2
    granularity: str = "tensor"
    project_gradient: bool = True
    target_scale: float = 1.0
    auto_threshold: float = 0.3  # method lawn_auto: lawn.AutoSwitch(threshold=..., check_every=total // auto_checks)
    auto_checks: int = 20
    # WRS: rescale the weights feeding a normalization to norm 1 after every wrs_every-th step
    wrs_every: int = 1
    # SSI: the training loss gets + ssi_lambda × lawn.scale_shift_invariant_penalty (weight decay's scale)
    ssi_lambda: float = 1e-4
    # A-FAN (method "afan", lawn.AFAN): feature perturbation at module afan_layer ("auto": the model's default)
    afan_layer: str = "auto"
    afan_steps: int = 5
    afan_step_size: float = 0.5 / 255
    afan_eps: float | None = None
    afan_random_start: bool = False
    afan_strengths: tuple[float, ...] = (1.0,)
    afan_normalize: str = "none"  # "none", "position" or "batch"
    afan_adv_weight: float = 0.5
    afan_bn: str = "freeze"  # "freeze" or "update"
    afan_direction: str = "adversarial"  # or "random": the random-sign control of the same size
    # ranking task: sampled negatives per observed (user, item) pair, redrawn every epoch
    negatives_per_positive: int = 4
    # run
    seed: int = 0
    device: str = "cpu"
    # the model's 4-D weights in torch's channels_last layout (conv nets: about 20 % less CPU time a step,
    # the same model up to float rounding); "contiguous" keeps torch's default
    memory_format: str = "contiguous"
    # extra evaluation: test accuracy with N(0, eval_noise_std²) noise added to the inputs (0: off)
    eval_noise_std: float = 0.0
    # extra evaluation: test accuracy on images blurred by a Gaussian of std eval_blur_sigma pixels (0: off)
    eval_blur_sigma: float = 0.0
    # validation and test metrics every eval_every-th epoch, before training and after the last epoch (or the
    # epoch a run stops); the epochs between keep their training loss and norms, their metrics are None.
    # Training is the same whatever its value: it only saves evaluation time.
    eval_every: int = 1
    # nested networks (lawn.harness.nested_runs; "none": not a nested run): the arm, the per-stick drop rate
    # (fixed-rate nested dropout; the learned ordering's prior), the weight of KL(q(z) || p(z)) in the loss, the
    # trained fraction of the units (narrow nets) and the fraction of the units at which the row is evaluated
    nested_arm: str = "none"
    nested_rate: float = 0.3
    nested_kl_weight: float = 1.0
    nested_fraction: float = 1.0
    eval_width: float = 1.0
    nested_order_lr_scale: float = 1.0  # the learned ordering's keep logits train at lr x this

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ construction and identity
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a mapping, naming any unknown field or wrongly typed value."""
        if not isinstance(data, dict):
            raise TypeError(f"run config: expected a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"run config: {unknown_field_message(unknown, names)}")
        return cls(**{name: coerce_field(name, value) for name, value in data.items()})

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (checked like ``from_dict``)."""
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["step_milestones"] = list(self.step_milestones)
        out["data_options"] = dict(sorted(self.data_options.items()))
        return out

    def key(self) -> str:
        """Stable identity of the run: sha256 of the canonical JSON of every field but ``device`` (and but
        the ``LATE_FIELDS`` that hold their default)."""
        defaults = _late_defaults()
        payload = {
            k: v for k, v in self.to_dict().items() if k not in KEY_IGNORES and not (k in defaults and v == defaults[k])
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@functools.cache
def _late_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in LATE_FIELDS}


def with_late_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A row's config with the ``LATE_FIELDS`` it predates filled in with their defaults."""
    return {**_late_defaults(), **config}


# ---------------------------------------------------------------------- reading configs from files
def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) file into a dict; nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ValueError(f"{path}: unknown config format {suffix!r}; use .json or .toml")
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError as err:  # Python 3.10
            raise ValueError(f"{path}: reading TOML needs Python >= 3.11; use JSON instead") from err
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it as a UTF-8 text file ({err})") from err
    try:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a table/object of fields")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``; the value is read as JSON when it parses, else kept a string."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


# ---------------------------------------------------------------------- checking
def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_field_message(unknown: list[str], known: Iterable[str]) -> str:
    known = sorted(known)
    hints = "".join(did_you_mean(name, known) for name in unknown)
    return f"unknown field(s) {unknown}{hints}; known fields: {', '.join(known)}"


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def coerce_field(name: str, value: Any) -> Any:
    """Check ``value`` against the type of field ``name``; ints are accepted for floats, lists for tuples."""
    hints = _hints()
    if name not in hints:
        raise ValueError(unknown_field_message([name], hints))
    return _coerce(name, hints[name], value)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(name, inner[0], value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name}: expected a list of numbers, got {value!r}")
        return tuple(_coerce(name, float, v) for v in value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError(f"{name}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if not is_int(value):
            raise TypeError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if not is_number(value):
            raise TypeError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _validate(c: RunConfig) -> None:
    """Field-by-field checks that need no registry (types, ranges). Names of data sets, models, optimizers,
    methods and normalizations are checked against their registries by :func:`lawn.harness.checked.checked`."""
    for name, hint in _hints().items():
        _coerce(name, hint, getattr(c, name))
    for name in (
        "width",
        "epochs",
        "batch_size",
        "base_batch_size",
        "negatives_per_positive",
        "wrs_every",
        "eval_every",
    ):
        _check(getattr(c, name) >= 1, f"{name}: must be >= 1, got {getattr(c, name)}")
    for name in ("train_limit", "test_limit"):
        value = getattr(c, name)
        _check(value is None or value >= 2, f"{name}: must be None or >= 2, got {value}")
    _check(0.0 < c.val_fraction < 1.0, f"val_fraction: must be in (0, 1), got {c.val_fraction}")
    _check(math.isfinite(c.lr) and c.lr > 0, f"lr: must be a finite number > 0, got {c.lr}")
    _check(
        math.isfinite(c.weight_decay) and c.weight_decay >= 0,
        f"weight_decay: must be >= 0, got {c.weight_decay}",
    )
    _check(0.0 <= c.momentum < 1.0, f"momentum: must be in [0, 1), got {c.momentum}")
    _check(c.lr_scaling in LR_SCALINGS, f"lr_scaling: expected one of {LR_SCALINGS}, got {c.lr_scaling!r}")
    _check(c.schedule in SCHEDULES, f"schedule: expected one of {SCHEDULES}, got {c.schedule!r}")
    _check(0.0 <= c.warmup_fraction < 1.0, f"warmup_fraction: must be in [0, 1), got {c.warmup_fraction}")
    _check(
        all(0.0 < m < 1.0 for m in c.step_milestones) and list(c.step_milestones) == sorted(c.step_milestones),
        f"step_milestones: increasing fractions of training in (0, 1), got {list(c.step_milestones)}",
    )
    _check(0.0 <= c.rewarmup_fraction < 1.0, f"rewarmup_fraction: must be in [0, 1), got {c.rewarmup_fraction}")
    _check(
        c.rewarmup_fraction == 0.0 or c.schedule in ("cosine", "constant"),
        f"rewarmup_fraction: the three-phase schedule decays by 'cosine' or 'constant', got schedule={c.schedule!r}",
    )
    _check(
        not c.rewarmup_all or c.rewarmup_fraction > 0.0,
        "rewarmup_all: gives every method the three-phase schedule, which needs rewarmup_fraction > 0 "
        f"(got rewarmup_fraction={c.rewarmup_fraction})",
    )
    _check(0.0 < c.auto_threshold < 1.0, f"auto_threshold: must be in (0, 1), got {c.auto_threshold}")
    _check(c.auto_checks >= 1, f"auto_checks: must be >= 1, got {c.auto_checks}")
    _check(0.0 < c.step_gamma <= 1.0, f"step_gamma: must be in (0, 1], got {c.step_gamma}")
    _check(0.0 <= c.free_fraction <= 1.0, f"free_fraction: must be in [0, 1], got {c.free_fraction}")
    _check(
        c.granularity in GRANULARITIES,
        f"granularity: expected one of {GRANULARITIES}, got {c.granularity!r}",
    )
    _check(
        math.isfinite(c.target_scale) and c.target_scale > 0,
        f"target_scale: must be > 0, got {c.target_scale}",
    )
    _check(
        math.isfinite(c.ssi_lambda) and c.ssi_lambda >= 0,
        f"ssi_lambda: must be a finite number >= 0, got {c.ssi_lambda}",
    )
    _check(
        math.isfinite(c.eval_blur_sigma) and c.eval_blur_sigma >= 0,
        f"eval_blur_sigma: must be a finite number of pixels >= 0 (0: off), got {c.eval_blur_sigma}",
    )
    _check(c.nested_arm in NESTED_ARMS, f"nested_arm: expected one of {NESTED_ARMS}, got {c.nested_arm!r}")
    _check(
        c.memory_format in MEMORY_FORMATS, f"memory_format: expected one of {MEMORY_FORMATS}, got {c.memory_format!r}"
    )
    _check(0.0 < c.nested_rate < 1.0, f"nested_rate: a drop rate in (0, 1), got {c.nested_rate}")
    _check(
        math.isfinite(c.nested_kl_weight) and c.nested_kl_weight >= 0,
        f"nested_kl_weight: a finite number >= 0, got {c.nested_kl_weight}",
    )
    _check(
        math.isfinite(c.nested_order_lr_scale) and c.nested_order_lr_scale > 0,
        f"nested_order_lr_scale: a finite number > 0, got {c.nested_order_lr_scale}",
    )
    for name in ("nested_fraction", "eval_width"):
        _check(0.0 < getattr(c, name) <= 1.0, f"{name}: a fraction of the units in (0, 1], got {getattr(c, name)}")
    _check(
        0 <= c.seed < 2**64 and 0 <= c.data_seed < 2**64,  # torch's generators take 64-bit seeds
        f"seed/data_seed: must be >= 0 and < 2**64, got {c.seed}/{c.data_seed}",
    )
    _check(
        c.device == "cpu" or c.device == "cuda" or c.device.startswith("cuda:") or c.device == "mps",
        f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {c.device!r}",
    )


# ---------------------------------------------------------------------- declared comparisons ([[compare]])
COMPARE_KEYS = ("compare", "bounds")
COMPARE_FIELDS = ("name", "a", "b", "by", "margin", "bounds", "pilot_by")
BOUND_EDGES = ("min", "max", "both")
# what a lottery row records beside its run config (row["lottery"]); a comparison may pick arms by these
#: what a row of the unification study's driver records under ``row["unification"]`` (its arms and levels)
UNIFICATION_FIELDS = (
    "arm",
    "level",
    "unify",
    "prune",
    "arm_epochs",
    "pre_epochs",
    "mid_epochs",
    "ft_epochs",
    "ft_lr",
    "pre_lr",
    "block_size",
    "gradual_stages",
    "rho",
    "rho_growth",
    "admm_updates_per_epoch",
)
LOTTERY_FIELDS = (
    "arm",
    "sparsity",
    "round",
    "finetune_lr_scale",
    "rewind_steps",
    "scope",
    "imp_rate",
    "arm_epochs",
    "total_epochs",
    "correlation_top",
)


@dataclass(frozen=True)
class Comparison:
    """One declared comparison of a study: arm ``a`` against arm ``b`` in every group of ``by`` values.

    ``a`` / ``b``: the fields (and values) that pick each arm's rows; ``margin``: the smallest difference of the
    test metric that matters (metric units); ``bounds``: tuned field → ``"min"`` / ``"max"`` / ``"both"``, the
    grid edges that are hard bounds (a selected value there is not "on the edge of the grid"); ``pilot_by``: the
    ``by`` fields a pilot selects within (``None``: all of ``by``; ``[]``: one choice from the mean over every group).
    """

    name: str
    a: dict[str, Any]
    b: dict[str, Any]
    by: tuple[str, ...]
    margin: float
    bounds: dict[str, str] = field(default_factory=dict)
    pilot_by: tuple[str, ...] | None = None


def _bounds(value: Any, where: str, known: set[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f'{where}: expected a table of field = "min" / "max" / "both", got {value!r}')
    for name, edge in value.items():
        if name not in known:
            raise ValueError(f"{where}: {unknown_field_message([name], known)}")
        if edge not in BOUND_EDGES:
            raise ValueError(f"{where}.{name}: expected one of {BOUND_EDGES}, got {edge!r}")
    return dict(value)


def _arm(value: Any, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise TypeError(f'{where}: expected a non-empty table of fields that pick the arm, e.g. {{method = "lawn"}}')
    arm = {}
    for name, v in value.items():
        if name not in known:
            raise ValueError(f"{where}: {unknown_field_message([name], known)}")
        try:
            arm[name] = coerce_field(name, v) if name in _hints() else v
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}.{err}") from err
    return arm


def parse_comparisons(data: dict[str, Any], extra_fields: Iterable[str] = ()) -> tuple[Comparison, ...]:
    """The ``[[compare]]`` tables of a sweep or lottery spec (and its top-level ``bounds``), checked as data.

    Field names are run config fields or ``extra_fields`` (a lottery's ``LOTTERY_FIELDS``); every error names the
    comparison and the key. A spec without ``compare`` has no comparisons. Top-level ``bounds`` apply to every
    comparison; a comparison's own ``bounds`` add to them (and win for the same field).
    """
    known = set(_hints()) | set(extra_fields)
    shared = _bounds(data.get("bounds", {}), "bounds", known)
    tables = data.get("compare", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise TypeError("compare: expected [[compare]] tables (a list of tables)")
    comparisons: list[Comparison] = []
    for index, table in enumerate(tables):
        name = table.get("name")
        where = f"compare[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")
        unknown = sorted(set(table) - set(COMPARE_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {list(COMPARE_FIELDS)}")
        missing = [k for k in ("name", "a", "b", "margin") if k not in table]
        if missing:
            raise ValueError(f"{where}: missing {missing} (name, a, b and margin are required; by and bounds optional)")
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"{where}: name: expected a non-empty string, got {name!r}")
        if name in {c.name for c in comparisons}:
            raise ValueError(f"{where}: name {name!r} is used twice; each comparison needs its own name")
        a = _arm(table["a"], f"{where}.a", known)
        b = _arm(table["b"], f"{where}.b", known)
        if a == b:
            raise ValueError(f"{where}: a and b pick the same rows ({a}); they must differ in at least one field")
        by = table.get("by", [])
        if not isinstance(by, list) or not all(isinstance(f, str) for f in by):
            raise TypeError(f'{where}.by: expected a list of field names, e.g. ["optimizer", "batch_size"], got {by!r}')
        for f in by:
            if f not in known:
                raise ValueError(f"{where}.by: {unknown_field_message([f], known)}")
        if len(set(by)) != len(by):
            raise ValueError(f"{where}.by: a field is listed twice in {by}")
        both = [f for f in by if f in a and f in b]
        if both:
            raise ValueError(f"{where}.by: {both} fixed by both a and b, so they group nothing; remove them from by")
        margin = table["margin"]
        if not is_number(margin) or not math.isfinite(margin) or margin < 0:
            raise ValueError(
                f"{where}.margin: expected a number >= 0 in metric units (e.g. 0.005 = half a point of accuracy), "
                f"got {margin!r}"
            )
        bounds = {**shared, **_bounds(table.get("bounds", {}), f"{where}.bounds", known)}
        pilot_by = table.get("pilot_by")
        if pilot_by is not None:
            if not isinstance(pilot_by, list) or not all(isinstance(f, str) and f in by for f in pilot_by):
                raise ValueError(f"{where}.pilot_by: expected a list of fields of by {by}, got {pilot_by!r}")
            pilot_by = tuple(pilot_by)
        comparisons.append(Comparison(name, a, b, tuple(by), float(margin), bounds, pilot_by))
    return tuple(comparisons)
