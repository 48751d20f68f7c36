"""Fresh seeds at a pilot's choice, from the command line (``lawn.harness.pilot.PilotSelected`` over ``run_sweep``).

    python -m lawn.harness.fresh_seeds SPEC --pilot PILOT.jsonl --seeds 1 2 3 4 5 --results FILE --jobs 2 --threads 1

Runs ``SPEC``'s grid with its ``seeds`` replaced by ``--seeds``, in every setting only at the grid point the pilot's
rows (the same spec run on its own seeds) selected on validation; resumable like ``lawn sweep``. The verdicts then
pair these seeds: ``lawn report FILE --pilot PILOT.jsonl --spec COMPARE``.
"""

from __future__ import annotations

import argparse

from lawn.harness.config import load_mapping
from lawn.harness.pilot import PilotSelected
from lawn.harness.results import read_rows
from lawn.harness.sweep import SweepSpec, run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--pilot", required=True, help="the pilot's rows (the same spec, its own seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base field")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    args = parser.parse_args(argv)
    from lawn.harness.config import parse_assignment

    data = load_mapping(args.spec)
    data["seeds"] = args.seeds
    data["base"] = {**data.get("base", {}), **dict(parse_assignment(text) for text in args.set)}
    pilot = read_rows(args.pilot)
    if not pilot:
        raise ValueError(f"--pilot {args.pilot}: no rows; run the pilot first")
    spec = PilotSelected(SweepSpec.from_dict(data), pilot)
    if args.dry_run:
        for config, tuned in spec.expand():
            print(config.method, config.seed, {t: getattr(config, t) for t in tuned})
        print(f"{len(spec.expand())} runs")
        return 0
    backend = None
    if args.jobs > 1:
        from lawn.harness.parallel import LocalPool

        backend = LocalPool(args.jobs, threads=args.threads)
    counts = run_sweep(spec, args.results, backend=backend)  # type: ignore[arg-type]
    print(counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
