"""Result rows seen through another test metric, so ``lawn report --spec`` can judge it.

    python -m lawn.harness.metric_view RESULTS... --metric noisy_test_metric --out VIEW.jsonl
    python -m lawn.harness.metric_view RESULTS... --metric ece --lower-is-better --out VIEW.jsonl

Verdicts pair each row's ``test_metric``. A view row is the row with ``test_metric`` replaced by ``row[metric]``
(negated with ``--lower-is-better``, so "better" still means a > b) and ``metric`` renamed to say so;
``val_metric`` is left as it is, so every arm is selected on the same validation accuracy as in the plain report
and only the judged number changes. ``key`` gets the metric appended (a view never passes for the row itself).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lawn.harness.results import append_row, read_rows


def view(
    rows: list[dict[str, Any]], metric: str, lower_is_better: bool = False, where: str = "rows"
) -> list[dict[str, Any]]:
    """``rows`` with ``test_metric = ±row[metric]`` (module docstring); an error naming the first row without it."""
    out = []
    for number, row in enumerate(rows, 1):
        if metric not in row and not row.get("diverged"):
            raise ValueError(
                f"{where}: row {number} (key {row.get('key')}) has no {metric!r}; its fields: {sorted(row)}"
            )
        value = row.get(metric)
        if value is not None and lower_is_better:
            value = -value
        name = f"-{metric}" if lower_is_better else metric
        out.append({**row, "key": f"{row['key']}:{name}", "metric": name, "test_metric": value})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--metric", required=True, help="the row field judged as the test metric")
    parser.add_argument("--lower-is-better", action="store_true", help="negate it (ECE, NLL)")
    parser.add_argument("--out", required=True, help="the view's JSONL file (written anew)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        out.unlink()
    count = 0
    for path in args.results:
        for row in view(read_rows(path), args.metric, args.lower_is_better, where=path):
            append_row(out, row)
            count += 1
    print(f"{count} rows viewed through {args.metric} in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
