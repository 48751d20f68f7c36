"""Verdicts from result rows: declared comparisons, paired over seeds, Holm-adjusted, with flags.

For each ``[[compare]]`` table of a spec (:func:`lawn.harness.config.parse_comparisons`) and each combination of
its ``by`` values (a *group*), each arm is selected on validation over its own grid (:func:`lawn.harness.selection.
select`; with pilot rows, the fields the pilot varied are selected on the pilot), and the test metrics of the two
arms at their selected points are paired by seed. With ``d_i = a_i − b_i`` over the ``n`` paired seeds (a diverged
seed counts as metric 0), mean ``d̄`` and sample std ``s``:

* interval: ``d̄ ± t(1 − α/2, n − 1) · s / √n`` with ``α = 0.05`` (``ci_low``, ``ci_high``);
* ``p``: the two-sided paired t-test of ``d̄ = 0``;
* Holm over the ``m`` comparisons of the report that have a ``p``: sorted ascending, ``p_adjusted`` of rank ``i`` is
  ``max_{j ≤ i} min(1, (m − j + 1) · p_(j))``; the *adjusted interval* of rank ``i`` is the interval above at level
  ``1 − α / (m − i + 1)`` (Bonferroni–Holm step-down level);
* verdict: ``better`` / ``worse`` when ``p_adjusted < α`` (so the adjusted interval excludes 0) and ``|d̄| ≥ margin``;
  ``level`` when the adjusted interval lies inside ``(−margin, margin)``; otherwise ``inconclusive``, with a note of
  about how many paired seeds would resolve it at the observed ``s``.

Flags force ``inconclusive`` (each is a note): a tuned field's selected value on the edge of its grid (unless
``bounds`` declares that edge a hard bound), arms tuned over grids of different sizes, fewer than 2 paired seeds.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from lawn._checks import is_number
from lawn.harness.config import (
    LOTTERY_FIELDS,
    UNIFICATION_FIELDS,
    Comparison,
    load_mapping,
    parse_comparisons,
    with_late_defaults,
)
from lawn.harness.selection import NOT_SETTING, Selection, select

ALPHA = 0.05
RECORD_FIELDS = tuple(dict.fromkeys((*LOTTERY_FIELDS, *UNIFICATION_FIELDS)))  # what [[compare]] may name
MAX_SEEDS = 100_000
VERDICTS = ("better", "worse", "level", "inconclusive")


# ---------------------------------------------------------------------- statistics
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def paired_stats(diffs: list[float]) -> dict[str, float | None]:
    """Mean, sample std, 95 % t-interval and two-sided p of the paired differences ``diffs``.

    With fewer than 2 differences there is no spread: std, interval and p are ``None``. With zero spread the
    interval is the point and ``p`` is 1 for a zero mean, 0 otherwise.
    """
    n = len(diffs)
    out: dict[str, float | None] = {"mean": statistics.fmean(diffs) if diffs else None}
    out.update(sd=None, ci_low=None, ci_high=None, p=None)
    if n < 2:
        return out
    mean = out["mean"]
    assert mean is not None
    sd = statistics.stdev(diffs)
    half = t_quantile(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        from scipy.stats import t

        p = float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    out.update(sd=sd, ci_low=mean - half, ci_high=mean + half, p=p)
    return out


def mean_and_half_width(values: list[float]) -> tuple[float, float]:
    """Mean of ``values`` (at least one) and the half-width of its 95 % t-interval (0 with one value)."""
    if not values:
        raise ValueError("mean_and_half_width: no values")
    stats = paired_stats(values)
    mean = stats["mean"]
    assert mean is not None
    return mean, 0.0 if stats["ci_high"] is None else stats["ci_high"] - mean


def holm(pvalues: list[float]) -> tuple[list[float], list[int]]:
    """Holm-adjusted p-values of ``pvalues`` and each one's rank (1 = smallest p).

    ``p_adj(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))`` over the ascending order; ties keep their input order.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda k: pvalues[k])
    adjusted = [0.0] * m
    ranks = [0] * m
    running = 0.0
    for rank, k in enumerate(order, start=1):
        running = max(running, min(1.0, (m - rank + 1) * pvalues[k]))
        adjusted[k] = running
        ranks[k] = rank
    return adjusted, ranks


def seeds_to_resolve(mean: float, sd: float, margin: float, alpha: float) -> int | None:
    """About how many paired seeds make the interval at level ``1 − alpha`` decide, if ``mean`` and ``sd`` stay.

    Towards better/worse (``|mean| ≥ margin``) the half-width must fall below ``|mean|``; towards level it must
    fall below ``margin − |mean|``. ``None`` when no number of seeds would (zero target) or more than ``MAX_SEEDS``.
    """
    import numpy as np
    from scipy.stats import t

    target = abs(mean) if abs(mean) >= margin else margin - abs(mean)
    if target <= 0:
        return None
    if sd == 0:
        return 2
    n = np.arange(2, MAX_SEEDS + 1)
    half = t.ppf(1 - alpha / 2, n - 1) * sd / np.sqrt(n)
    hits = np.nonzero(half < target)[0]
    return int(n[hits[0]]) if hits.size else None


# ---------------------------------------------------------------------- rows, arms and groups
#: the sections beside ``config`` in which a study's driver records a row's arm (lottery, unification)
RECORDS = ("lottery", "unification")


def field_value(row: dict[str, Any], name: str) -> Any:
    """A field of a row: its run config (late fields filled in), else what a lottery or unification row records."""
    config = with_late_defaults(row["config"])
    if name in config:
        return config[name]
    for record in RECORDS:
        if name in (row.get(record) or {}):
            return row[record][name]
    return None


def _same(x: Any, y: Any) -> bool:
    numbers = all(is_number(v) for v in (x, y))
    return math.isclose(x, y, rel_tol=1e-9) if numbers else x == y


def _matches(row: dict[str, Any], fields: dict[str, Any]) -> bool:
    return all(_same(field_value(row, k), v) for k, v in fields.items())


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    """Everything that makes a row's setting but its seed and tuned values (config, lottery and unification fields)."""
    tuned = set(row.get("tuned") or ("lr", "weight_decay"))
    config = with_late_defaults(row["config"])
    out = {k: v for k, v in config.items() if k not in NOT_SETTING and k not in tuned}
    for record in RECORDS:
        out.update({f"{record}.{k}": v for k, v in (row.get(record) or {}).items()})
    return out


def _sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value if isinstance(value, (int, float, str)) else json.dumps(value))


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fields_text(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in fields.items())


def _one_setting(rows: list[dict[str, Any]], where: str) -> Selection:
    """The single setting of ``rows`` selected on validation; an error naming the fields if there are several.

    Rows that list different tuned fields (a ``lawn run`` row beside sweep rows) are read with the union of them.
    """
    tuned = sorted({t for r in rows for t in (r.get("tuned") or ("lr", "weight_decay"))})
    rows = [{**r, "tuned": tuned} for r in rows]
    identities = [_identity(r) for r in rows]
    distinct = {json.dumps(i, sort_keys=True, default=str) for i in identities}
    if len(distinct) > 1:
        keys = sorted({k for i in identities for k in i})
        differing = [k for k in keys if len({json.dumps(i.get(k), default=str) for i in identities}) > 1]
        values = {k: sorted({json.dumps(i.get(k), default=str) for i in identities}) for k in differing}
        raise ValueError(
            f"{where} matches {len(distinct)} settings that differ in {values}; name the field in the arm "
            "(a = {...}) or in by, so each arm and group is one setting"
        )
    selections = select(rows)
    assert len(selections) == 1
    return selections[0]


def _grid(rows: list[dict[str, Any]], tuned: list[str]) -> dict[str, list[Any]]:
    return {f: sorted({field_value(r, f) for r in rows}, key=_sort_key) for f in tuned}


@dataclass
class Arm:
    """One arm in one group: the rows at its selected point (by seed) and how it was selected."""

    fields: dict[str, Any]
    selected: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    grid_size: int = 0
    selected_on: str = "results"
    by_seed: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _metric(row: dict[str, Any]) -> float:
    value = row.get("test_metric")
    return 0.0 if row.get("diverged") or value is None else float(value)


def pilot_choice(pilot: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]], int, int]:
    """The pilot's choice for the tuned fields it varied: (choice, their grids, grid points, settings pooled).

    A field is varied when it takes two or more values within one setting of the pilot. Each combination of the
    varied fields is scored by the mean last-epoch validation metric over every pilot row at it (all settings
    pooled: a choice made once for several groups, as with ``pilot_by = []``); the best wins (ties: first sorted).
    """
    settings: dict[str, list[dict[str, Any]]] = {}
    for r in pilot:
        settings.setdefault(json.dumps(_identity(r), sort_keys=True, default=str), []).append(r)
    varied: dict[str, list[Any]] = {}
    for rows in settings.values():
        tuned = list(rows[0].get("tuned") or ("lr", "weight_decay"))
        for name, values in _grid(rows, tuned).items():
            if len(values) > 1:
                varied[name] = sorted({*varied.get(name, []), *values}, key=_sort_key)
    if not varied:
        return {}, {}, 1, len(settings)
    scores: dict[str, list[float]] = {}
    for r in pilot:
        point = json.dumps({f: field_value(r, f) for f in varied}, sort_keys=True)
        value = r.get("val_metric")
        scores.setdefault(point, []).append(0.0 if r.get("diverged") or value is None else float(value))
    best = sorted(scores, key=lambda k: (-statistics.fmean(scores[k]), k))[0]
    return json.loads(best), varied, len(scores), len(settings)


def choose_arm(
    fields: dict[str, Any], rows: list[dict[str, Any]], pilot: list[dict[str, Any]], label: str, where: str
) -> Arm:
    """Select arm ``label`` on validation: on ``pilot`` for the fields it varied, on ``rows`` for the rest."""
    arm = Arm(fields=fields)
    choice: dict[str, Any] = {}
    pilot_grid: dict[str, list[Any]] = {}
    pilot_size = 1
    if pilot:
        choice, pilot_grid, pilot_size, pooled = pilot_choice(pilot)
        rows = [r for r in rows if _matches(r, choice)]
        if choice and pooled > 1:
            arm.notes.append(f"{label}: the pilot's choice is the best mean over {pooled} pooled settings")
        if not rows:
            arm.selected, arm.grid, arm.grid_size = choice, pilot_grid, pilot_size
            arm.notes.append(f"{label}: no runs in RESULTS at the pilot's choice {_fields_text(choice)}")
            return arm
    if not rows:
        return arm
    chosen = _one_setting(rows, f"{where}, arm {label}")
    results_grid = _grid(rows, chosen.tuned)
    arm.selected = {**chosen.chosen, **choice}
    arm.grid = {**results_grid, **pilot_grid}
    arm.grid_size = pilot_size * chosen.grid_size
    if choice:
        arm.selected_on = f"pilot ({_fields_text(choice)}) and RESULTS"
    arm.by_seed = {int(r["config"]["seed"]): r for r in chosen.rows}
    diverged = sum(bool(r.get("diverged")) for r in chosen.rows)
    if diverged:
        arm.notes.append(f"{label}: {diverged} diverged seed(s) counted as metric 0")
    return arm


def edge_notes(arm: Arm, label: str, bounds: dict[str, str]) -> list[str]:
    """A note for each tuned numeric field whose selected value is the smallest or largest of its grid."""
    notes = []
    for name, values in arm.grid.items():
        numeric = [v for v in values if is_number(v)]
        if len(numeric) < 2 or len(numeric) != len(values) or name not in arm.selected:
            continue
        value = arm.selected[name]
        for edge, end in (("min", min(numeric)), ("max", max(numeric))):
            if _same(value, end) and bounds.get(name) not in (edge, "both"):
                word = "smallest" if edge == "min" else "largest"
                grid = ", ".join(_fmt(v) for v in numeric)
                notes.append(
                    f"{label}: {name} = {_fmt(value)} is the {word} value of its grid [{grid}]: optimum not bracketed"
                )
    return notes


def _groups(comparison: Comparison, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of ``by`` values seen in the rows of either arm (fields an arm fixes are not its own)."""
    values: dict[str, list[Any]] = {f: [] for f in comparison.by}
    for arm in (comparison.a, comparison.b):
        for row in rows:
            if _matches(row, arm):
                for f in comparison.by:
                    if f not in arm:
                        value = field_value(row, f)
                        if not any(_same(value, v) for v in values[f]):
                            values[f].append(value)
    lists = [sorted(values[f], key=_sort_key) for f in comparison.by]
    return [dict(zip(comparison.by, combo)) for combo in product(*lists)]


def _arm_rows(rows: list[dict[str, Any]], arm: dict[str, Any], group: dict[str, Any]) -> list[dict[str, Any]]:
    wanted = {**{k: v for k, v in group.items() if k not in arm}, **arm}
    return [r for r in rows if _matches(r, wanted)]


def _unmatched_arm(label: str, arm: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Why an arm matches no row: each of its values that no row holds, with the values the rows do hold (a typo
    in a spec would otherwise read as a verdict, "inconclusive: a has no runs")."""
    unseen = []
    for name, value in arm.items():
        seen = {json.dumps(field_value(row, name), sort_keys=True, default=str) for row in rows}
        if not any(_same(field_value(row, name), value) for row in rows):
            listed = ", ".join(sorted(seen)[:8]) + (" …" if len(seen) > 8 else "")
            unseen.append(f"{name}={value!r} (the rows hold {listed})")
    why = "; ".join(unseen) if unseen else "no row holds all of its values at once"
    return f"arm {label} = {arm} matches no row: {why}"


# ---------------------------------------------------------------------- the verdicts of a report
def compare(
    comparisons: tuple[Comparison, ...] | list[Comparison],
    rows: list[dict[str, Any]],
    pilot: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One verdict object per comparison and group (see the module docstring), Holm-adjusted over all of them."""
    results = []
    for comparison in comparisons:
        unmatched = [
            _unmatched_arm(label, arm, rows)
            for label, arm in (("a", comparison.a), ("b", comparison.b))
            if not any(_matches(row, arm) for row in rows)
        ]
        if len(unmatched) == 1:  # the other arm's rows still give verdicts, which would read as outcomes
            warnings.warn(f"compare {comparison.name!r}: {unmatched[0]}", UserWarning, stacklevel=2)
        before = len(results)
        for group in _groups(comparison, rows):
            a_rows = _arm_rows(rows, comparison.a, group)
            b_rows = _arm_rows(rows, comparison.b, group)
            if a_rows or b_rows:
                results.append(_compare_group(comparison, group, a_rows, b_rows, pilot))
        if len(results) == before:
            raise ValueError(
                f"compare {comparison.name!r}: no row matches a = {comparison.a} or b = {comparison.b}; check the "
                "field values against the rows (or the RESULTS files): " + "; ".join(unmatched)
            )
    tested = [r for r in results if r["p"] is not None]
    adjusted, ranks = holm([r["p"] for r in tested])
    m = len(tested)
    for result, p_adj, rank in zip(tested, adjusted, ranks):
        result["p_adjusted"] = p_adj
        result["adjusted_level"] = 1 - ALPHA / (m - rank + 1)
        mean, sd, n = result["mean_diff"], result["sd_diff"], result["n"]
        half = t_quantile(1 - ALPHA / (2 * (m - rank + 1)), n - 1) * sd / math.sqrt(n)
        result["ci_adjusted_low"], result["ci_adjusted_high"] = mean - half, mean + half
    for result in results:
        _decide(result)
    return results


def _compare_group(
    comparison: Comparison,
    group: dict[str, Any],
    a_rows: list[dict[str, Any]],
    b_rows: list[dict[str, Any]],
    pilot: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    where = f"compare {comparison.name!r}" + (f", group {_fields_text(group)}" if group else "")
    pilot = pilot or []
    pilot_by = comparison.by if comparison.pilot_by is None else comparison.pilot_by
    pilot_group = {k: v for k, v in group.items() if k in pilot_by}
    a = choose_arm(comparison.a, a_rows, _arm_rows(pilot, comparison.a, pilot_group), "a", where)
    b = choose_arm(comparison.b, b_rows, _arm_rows(pilot, comparison.b, pilot_group), "b", where)
    flags: list[str] = []
    short: list[str] = []  # the same flags in a few words, for the docs' tables
    notes = a.notes + b.notes
    for label, arm_rows in (("a", a_rows), ("b", b_rows)):
        if not arm_rows:
            flags.append(f"{label} has no runs in this group")
            short.append(f"{label} missing")
    edges = edge_notes(a, "a", comparison.bounds) + edge_notes(b, "b", comparison.bounds)
    flags += edges
    if edges:
        where = [n.split(" is the ")[0].replace(" = ", "=") + (" (max)" if "largest" in n else " (min)") for n in edges]
        short.append("not bracketed: " + ", ".join(where))
    if a.grid_size and b.grid_size and a.grid_size != b.grid_size:
        flags.append(f"unequal tuning budgets: a was selected over {a.grid_size} grid points, b over {b.grid_size}")
        short.append(f"budgets {a.grid_size} vs {b.grid_size} grid points")
    seeds = sorted(set(a.by_seed) & set(b.by_seed))
    alone_a, alone_b = sorted(set(a.by_seed) - set(seeds)), sorted(set(b.by_seed) - set(seeds))
    if alone_a or alone_b:
        notes.append(
            f"{len(alone_a) + len(alone_b)} run(s) without a partner left out"
            + (f" (a: seeds {alone_a})" if alone_a else "")
            + (f" (b: seeds {alone_b})" if alone_b else "")
        )
    if len(seeds) < 2:
        flags.append(f"fewer than 2 paired seeds (n = {len(seeds)}): no spread, no test")
        short.append(f"n = {len(seeds)}")
    diffs = [_metric(a.by_seed[s]) - _metric(b.by_seed[s]) for s in seeds]
    stats = paired_stats(diffs)

    def arm_json(arm: Arm) -> dict[str, Any]:
        return {
            "fields": arm.fields,
            "selected": arm.selected,
            "selected_on": arm.selected_on,
            "grid": arm.grid,
            "grid_size": arm.grid_size,
            "test_by_seed": {str(s): _metric(r) for s, r in sorted(arm.by_seed.items())},
        }

    return {
        "name": comparison.name,
        "group": group,
        "a": arm_json(a),
        "b": arm_json(b),
        "metric": next((r.get("metric", "accuracy") for r in a_rows + b_rows), "accuracy"),
        "margin": comparison.margin,
        "n": len(seeds),
        "mean_diff": stats["mean"],
        "sd_diff": stats["sd"],
        "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"],
        "p": stats["p"],
        "p_adjusted": None,
        "adjusted_level": None,
        "ci_adjusted_low": None,
        "ci_adjusted_high": None,
        "verdict": "inconclusive",
        "reason": "; ".join(short),
        "flags": flags,
        "notes": notes,
    }


def _decide(result: dict[str, Any]) -> None:
    """Apply the verdict rule and the flags to ``result`` (in place); the notes say why."""
    margin = result["margin"]
    statistical = "inconclusive"
    if result["p_adjusted"] is not None:
        low, high, mean = result["ci_adjusted_low"], result["ci_adjusted_high"], result["mean_diff"]
        if result["p_adjusted"] < ALPHA and abs(mean) >= margin:
            statistical = "better" if mean > 0 else "worse"
        elif -margin < low and high < margin:
            statistical = "level"
    flags = result.pop("flags")
    result["verdict"] = "inconclusive" if flags else statistical
    notes = list(flags)
    reason = [result["reason"]] if result["reason"] else []
    if flags and statistical != "inconclusive":
        notes.append(f"the statistics alone would say {statistical!r}; the flags above make it inconclusive")
        reason.append(f"statistics alone: {statistical}")
    if statistical == "inconclusive" and result["sd_diff"] is not None:
        level = result["adjusted_level"] or 1 - ALPHA
        needed = seeds_to_resolve(result["mean_diff"], result["sd_diff"], margin, 1 - level)
        spread = f"sd of the paired differences {result['sd_diff']:.4f}, mean {result['mean_diff']:+.4f}"
        if needed is None:
            notes.append(f"no number of seeds would resolve it at the observed spread ({spread}, margin {margin:g})")
            reason.append("no number of seeds would resolve it")
        else:
            notes.append(
                f"about {needed} paired seeds would resolve it at the observed spread ({spread}; at this "
                f"comparison's Holm level {level:.4f})"
            )
            reason.append(f"~{needed} seeds would resolve it")
    result["notes"] = notes + result["notes"]
    result["reason"] = "; ".join(reason)


# ---------------------------------------------------------------------- files
def load_comparisons(*paths: str | Path) -> tuple[Comparison, ...]:
    """The ``[[compare]]`` tables of sweep or lottery spec files, in order; an error when one declares none or two
    share a name."""
    comparisons: list[Comparison] = []
    for path in paths:
        data = load_mapping(path)
        try:
            mine = parse_comparisons(data, RECORD_FIELDS)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{path}: {err}") from err
        if not mine:
            raise ValueError(f"{path}: declares no [[compare]] tables; add one per comparison (docs/harness.md)")
        for c in mine:
            if c.name in {d.name for d in comparisons}:
                raise ValueError(f"{path}: comparison name {c.name!r} is already used by an earlier spec")
            comparisons.append(c)
    return tuple(comparisons)


def _num(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def _group_text(group: dict[str, Any]) -> str:
    return _fields_text(group) if group else "all"


def _difference(result: dict[str, Any]) -> str:
    """``+0.0123 [−0.0010, +0.0256]`` (adjusted interval); with one pair ``+0.0123 (n = 1)``, no spread."""
    if result["n"] == 0:
        return "–"
    if result["n"] == 1:
        return f"{_num(result['mean_diff'], sign=True)} (n = 1)"
    return (
        f"{_num(result['mean_diff'], sign=True)} [{_num(result['ci_adjusted_low'], sign=True)}, "
        f"{_num(result['ci_adjusted_high'], sign=True)}]"
    )


def markdown(results: list[dict[str, Any]]) -> str:
    """The verdict table of a report (the section ``report.md`` gets)."""
    lines = [
        "## Verdicts",
        "",
        "Declared comparisons, paired by seed. a − b in metric units with its Holm-adjusted interval (level "
        "1 − 0.05 / (m − rank + 1)); p: paired t-test, Holm-adjusted over all comparisons of this report. better / "
        "worse: adjusted p < 0.05 and |a − b| ≥ margin; level: the adjusted interval inside ±margin; inconclusive "
        "otherwise or when a flag (first notes) forces it. Rule: docs/harness.md.",
        "",
        "| comparison | group | a (selected) | b (selected) | n | a − b [adjusted interval] | p | Holm p | margin "
        "| verdict | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        notes = "; ".join(r["notes"]) or "–"
        lines.append(
            f"| {r['name']} | {_group_text(r['group'])} | {_fields_text(r['a']['selected']) or '–'} | "
            f"{_fields_text(r['b']['selected']) or '–'} | {r['n']} | {_difference(r)} | {_p(r['p'])} | "
            f"{_p(r['p_adjusted'])} | {r['margin']:g} | **{r['verdict']}** | {notes} |"
        )
    return "\n".join(lines) + "\n"


def insert_section(report: str, section: str) -> str:
    """``report`` with ``section`` placed before its first ``## `` heading (or at the end)."""
    lines = report.split("\n")
    for index, line in enumerate(lines):
        if line.startswith("## "):
            return "\n".join(lines[:index] + section.split("\n") + lines[index:])
    return report.rstrip("\n") + "\n\n" + section


def write_verdicts(
    rows: list[dict[str, Any]],
    specs: list[str] | list[Path],
    out_dir: str | Path,
    pilot: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """Write ``verdicts.json`` into ``out_dir`` and put the verdict table into its ``report.md``."""
    results = compare(load_comparisons(*specs), rows, pilot)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "verdicts.json"
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    report = out / "report.md"
    text = report.read_text() if report.exists() else "# Report\n"
    report.write_text(insert_section(text, markdown(results)))
    return [path, report]


# ---------------------------------------------------------------------- verdict lines in the docs
BLOCK = re.compile(r"<!-- (verdicts|verdict-summary): (\S+) -->\n(.*?)<!-- /\1 -->", re.DOTALL)


FLAG_WORDS = {
    "optimum not bracketed": "optimum not bracketed",
    "unequal tuning budgets": "unequal tuning budgets",
    "fewer than 2 paired seeds": "fewer than 2 paired seeds",
    "has no runs": "an arm without runs",
}


def summary_line(results: list[dict[str, Any]], name: str) -> str:
    """``name: 0 better, 0 worse, 1 level, 8 inconclusive of 9 groups (inconclusive: …)`` for one comparison."""
    mine = [r for r in results if r["name"] == name]
    counts = ", ".join(f"{sum(r['verdict'] == v for r in mine)} {v}" for v in VERDICTS)
    why = []
    for text, short in FLAG_WORDS.items():
        k = sum(r["verdict"] == "inconclusive" and any(text in note for note in r["notes"]) for r in mine)
        if k:
            why.append(f"{short} in {k}")
    wide = sum(r["verdict"] == "inconclusive" and not any(t in n for t in FLAG_WORDS for n in r["notes"]) for r in mine)
    if wide:
        why.append(f"interval too wide for its seeds in {wide}")
    groups = "group" if len(mine) == 1 else "groups"
    return f"{name}: {counts} of {len(mine)} {groups}" + (f" (inconclusive: {'; '.join(why)})" if why else "")


def compact_table(results: list[dict[str, Any]]) -> str:
    """The verdicts in a short table (the docs' form): group, n, a − b with its adjusted interval, verdict, why."""
    lines = [
        "| comparison | group | n | a − b [adjusted interval] | Holm p | verdict | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {_group_text(r['group'])} | {r['n']} | {_difference(r)} | {_p(r['p_adjusted'])} | "
            f"**{r['verdict']}** | {r['reason'] or '–'} |"
        )
    return "\n".join(lines) + "\n"


def render_block(kind: str, results: list[dict[str, Any]], path: str) -> str:
    """The generated text between a docs marker pair: the verdict table, or one summary line per comparison."""
    if kind == "verdicts":
        return f"Computed by `lawn report --spec` ([{Path(path).name}]({path})):\n\n" + compact_table(results)
    names = list(dict.fromkeys(r["name"] for r in results))
    return "".join(f"- {summary_line(results, n)}\n" for n in names)


def sync_docs(doc: str | Path, root: str | Path, write: bool = False) -> list[str]:
    """Regenerate every verdict block of ``doc`` from the ``verdicts.json`` it names (paths relative to ``root``).

    Returns the blocks that disagreed (their JSON paths); with ``write`` the file is rewritten with the regenerated
    blocks. Link paths inside a block are written relative to ``doc``'s folder.
    """
    doc, root = Path(doc), Path(root)
    text = doc.read_text()
    stale = []

    def replace(match: re.Match[str]) -> str:
        kind, source, body = match.group(1), match.group(2), match.group(3)
        results = json.loads((root / source).read_text())
        link = os.path.relpath(root / source, doc.parent)
        fresh = render_block(kind, results, link)
        if fresh != body:
            stale.append(source)
        return f"<!-- {kind}: {source} -->\n{fresh}<!-- /{kind} -->"

    new = BLOCK.sub(replace, text)
    if write and new != text:
        doc.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    """``python -m lawn.harness.verdicts README.md docs/results.md``: regenerate the verdict blocks of each doc.

    Every doc is checked before any is written, so a block naming a missing ``verdicts.json`` changes nothing.
    """
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the <!-- verdicts: … --> blocks of markdown files.")
    parser.add_argument("docs", nargs="+", help="markdown files whose blocks name verdicts.json paths from here")
    args = parser.parse_args(argv)
    for name in args.docs:
        if not Path(name).is_file():
            parser.error(f"{name}: no such file")
        missing = [s for _, s, _ in BLOCK.findall(Path(name).read_text()) if not Path(s).is_file()]
        if missing:
            parser.error(f"{name} names {missing[0]}, which does not exist: run its `lawn report --spec` first")
    for name in args.docs:
        print(name, "updated:" if sync_docs(name, ".", write=True) else "up to date", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
