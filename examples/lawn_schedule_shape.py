"""Plot lawn.LAWNSchedule's shape (docs/lawn_schedule.png): a fixed and an automatic switch, and the decay options.

python examples/lawn_schedule_shape.py --out docs/lawn_schedule.png
"""

from __future__ import annotations

import argparse

from lawn.schedule import lawn_schedule_factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/lawn_schedule.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total, warmup, rewarmup = 1000, 50, 50
    steps = list(range(total))
    curves = [
        ("switch at 300, cosine (defaults)", 300, {}),
        ("switch at 550 (e.g. automatic), cosine", 550, {}),
        ("switch at 300, linear to 0.1", 300, {"decay": "linear", "final_fraction": 0.1}),
        ("switch at 300, decay before the switch", 300, {"before_switch": "decay"}),
    ]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, switch, options in curves:
        values = [
            lawn_schedule_factor(
                t, total, switch if t >= switch else None, warmup_steps=warmup, rewarmup_steps=rewarmup, **options
            )
            for t in steps
        ]
        ax.plot(steps, values, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning-rate factor")
    ax.set_title(f"LAWNSchedule, T={total}, warm-up {warmup}, re-warm-up {rewarmup} from 0.1", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
