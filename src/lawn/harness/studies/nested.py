"""Bayesian nested networks vs fixed-rate nested dropout on a Fashion-MNIST subset.

    PYTHONPATH=src nice -n 5 python -m lawn.harness.studies.nested --out docs/results/nested

Arms (same CNN, optimizer, learning rate, epochs and data for all; no arm is tuned):

- ``nested_dropout``: fixed-rate nested dropout (stick keep probability ``π``, rate ``1 − π``), deterministic weights;
- ``learned_order``: the learned downhill ordering (prior ``π``), deterministic weights; loss ``CE + KL(q(z)‖p(z))``;
- ``bayes_nested``: learned ordering and Gaussian weights; loss ``CE + KL_z + λ_t · KL_w / N`` with ``λ_t`` rising
  linearly from 0 to 1 over training; predictions average 8 weight samples (``mc_predict``); ``bayes_mean`` is the
  same network evaluated once with the mean weights;
- ``narrow``: an ordinary CNN trained separately at each width (the upper bound).

At every width BatchNorm is re-estimated on training batches before testing. Writes ``rows.jsonl`` (one row per
arm, seed and width), ``timing.jsonl`` and ``report.md`` (tables, paired differences, verdicts) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lawn.harness.data_files import FASHION_MNIST_DIR, load_idx_dir
from lawn.harness.train import StepLoss, fit
from lawn.nested import (
    NestedConv2d,
    NestedLinear,
    expected_calibration_error,
    mc_predict,
    nested_kl,
    nll,
    ood_auroc,
    recalibrate_batchnorm,
    set_width,
    slice_model,
)

WIDTHS = (1.0, 0.75, 0.5, 0.25)
CHANNELS = (16, 32, 64)  # conv1, conv2, fc1 at width 1
NESTED_ARMS = ("nested_dropout", "learned_order", "bayes_nested")
MEAN, STD = 0.2860, 0.3530


def cnn(kind: str, fraction: float = 1.0, prior: float = 0.7) -> nn.Sequential:
    """conv(3×3)-BN-ReLU-pool ×2, fc-ReLU, fc; nested layers have 4 groups, the first always on."""
    c1, c2, h = (int(c * fraction) for c in CHANNELS)
    if kind == "narrow":
        conv1 = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1))
        conv2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2))
        fc1 = nn.Linear(c2 * 49, h)
    else:
        kw = {
            "groups_of_units": 4, "always_on": 1, "prior": prior, "temperature": 0.5,
            "learn_ordering": kind != "nested_dropout", "weight_noise": kind == "bayes_nested",
        }  # fmt: skip
        conv1 = NestedConv2d(1, c1, 3, padding=1, bias=False, norm=nn.BatchNorm2d(c1), **kw)
        conv2 = NestedConv2d(c1, c2, 3, padding=1, bias=False, norm=nn.BatchNorm2d(c2), **kw)
        fc1 = NestedLinear(c2 * 49, h, **kw)
    return nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         fc1, nn.ReLU(), nn.Linear(h, 10))  # fmt: skip


def load_data(train: int, test: int, ood: int) -> dict[str, torch.Tensor]:
    """Fashion-MNIST subsets (fixed, seed 0) and two OOD sets: sklearn digits resized to 28×28, uniform noise."""
    from sklearn.datasets import load_digits

    arrays = load_idx_dir(FASHION_MNIST_DIR)
    rng = np.random.default_rng(0)
    tr = rng.choice(len(arrays["train_labels"]), train, replace=False)
    te = rng.choice(len(arrays["test_labels"]), test, replace=False)

    def prep(images: np.ndarray) -> torch.Tensor:
        return ((torch.tensor(images, dtype=torch.float32) / 255.0 - MEAN) / STD)[:, None]

    digits = torch.tensor(load_digits().images[:ood], dtype=torch.float32)[:, None] / 16.0
    digits = F.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    noise = torch.rand(ood, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return {
        "x_train": prep(arrays["train_images"][tr]), "y_train": torch.tensor(arrays["train_labels"][tr]).long(),
        "x_test": prep(arrays["test_images"][te]), "y_test": torch.tensor(arrays["test_labels"][te]).long(),
        "digits": (digits - MEAN) / STD, "noise": (noise - MEAN) / STD,
    }  # fmt: skip


def train(model: nn.Module, kind: str, data: dict, epochs: int, lr: float, batch: int, seed: int) -> float:
    """Train with Adam on the harness's loop (``train.fit``); batch order from the global generator seeded
    with ``seed`` (the nested layers draw their noise from it too). Returns the CPU seconds."""
    torch.manual_seed(seed)
    x, y = data["x_train"], data["y_train"]
    n = len(y)
    steps = epochs * math.ceil(n / batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if kind != "narrow":
        set_width(model, None)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n)  # drawn when the epoch starts, before any of its forward passes
        return ((x[idx], y[idx]) for idx in order.split(batch))

    def loss(inputs: torch.Tensor, targets: torch.Tensor, step: int) -> StepLoss:
        data_loss = trained = F.cross_entropy(model(inputs), targets)
        if kind in ("learned_order", "bayes_nested"):
            trained = trained + nested_kl(model, "ordering")  # z is drawn per example: its KL counts per example
        if kind == "bayes_nested":
            trained = trained + (step + 1) / steps * nested_kl(model, "weights") / n  # global weights: KL / N
        return StepLoss(trained, data_loss)

    start = time.process_time()
    fit(model, opt, epochs, batches, loss)
    return time.process_time() - start


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    model.eval()
    if samples > 1:
        return torch.cat([mc_predict(model, chunk, samples=samples) for chunk in x.split(500)])
    return torch.cat([torch.softmax(model(chunk), -1) for chunk in x.split(500)])


def evaluate(model: nn.Module, data: dict, samples: int) -> dict[str, float]:
    probs = predict(model, data["x_test"], samples)
    labels = data["y_test"]
    digits, noise = predict(model, data["digits"], samples), predict(model, data["noise"], samples)
    return {
        "accuracy": float((probs.argmax(1) == labels).float().mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": nll(probs, labels),
        "auroc_digits": ood_auroc(probs, digits),
        "auroc_noise": ood_auroc(probs, noise),
    }


def recalibration_batches(data: dict, seed: int, count: int = 8, size: int = 250) -> list[torch.Tensor]:
    idx = torch.randperm(len(data["y_train"]), generator=torch.Generator().manual_seed(seed))[: count * size]
    return list(data["x_train"][idx].split(size))


@torch.no_grad()
def time_forward(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    model.eval()
    model(x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.train, args.test, args.ood)
    rows, timing = [], []
    for seed in args.seeds:
        for kind in NESTED_ARMS:
            torch.manual_seed(seed)
            model = cnn(kind, prior=args.prior)
            cpu = train(model, kind, data, args.epochs, args.lr, args.batch, seed)
            print(f"seed {seed} {kind}: trained in {cpu:.0f} CPU-s", flush=True)
            for width in WIDTHS:
                set_width(model, width)
                recalibrate_batchnorm(model, recalibration_batches(data, seed))
                evals = {kind: evaluate(model, data, args.samples if kind == "bayes_nested" else 1)}
                if kind == "bayes_nested":
                    evals["bayes_mean"] = evaluate(model, data, 1)
                for arm, metrics in evals.items():
                    rows.append({"arm": arm, "seed": seed, "width": width, "train_cpu_s": cpu, **metrics})
                    print(f"  {arm} w={width}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
                if seed == args.seeds[0] and kind == "bayes_nested":
                    sliced = slice_model(model, width, example_input=data["x_test"][:256])
                    x = data["x_test"][:256]
                    with torch.no_grad():
                        diff = float((sliced.eval()(x) - model.eval()(x)).abs().max())
                    timing.append({
                        "width": width, "params": sum(p.numel() for p in sliced.parameters()),
                        "sliced_ms": 1e3 * time_forward(sliced, x, args.reps),
                        "masked_ms": 1e3 * time_forward(model, x, args.reps), "max_abs_diff": diff,
                    })  # fmt: skip
            if kind == "bayes_nested":
                print(f"  P(group kept), seed {seed}: {_keep_summary(model)}", flush=True)
        for width in WIDTHS:
            torch.manual_seed(seed)
            model = cnn("narrow", fraction=width)
            cpu = train(model, "narrow", data, args.epochs, args.lr, args.batch, seed)
            recalibrate_batchnorm(model, recalibration_batches(data, seed))
            metrics = evaluate(model, data, 1)
            rows.append({"arm": "narrow", "seed": seed, "width": width, "train_cpu_s": cpu, **metrics})
            print(f"  narrow w={width} ({cpu:.0f} CPU-s): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "timing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in timing))
    (out / "report.md").write_text(report(rows, timing, args))
    print((out / "report.md").read_text())


def _keep_summary(model: nn.Module) -> dict[str, str]:
    from lawn.nested import nested_modules

    return {f"layer{i}": " ".join(f"{p:.2f}" for p in m.ordering.keep_probabilities().tolist())
            for i, m in enumerate(nested_modules(model))}  # fmt: skip


METRICS = (("accuracy", +1), ("ece", -1), ("nll", -1), ("auroc_digits", +1), ("auroc_noise", +1))
ARMS = ("nested_dropout", "learned_order", "bayes_nested", "bayes_mean", "narrow")


def report(rows: list[dict], timing: list[dict], args: argparse.Namespace) -> str:
    def cell(arm: str, width: float, metric: str) -> str:
        v = np.array([r[metric] for r in rows if r["arm"] == arm and r["width"] == width])
        return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}" if len(v) else "—"

    flags = "" if args.out == "docs/results/nested" else f" --out {args.out}"
    for name, default in DEFAULTS.items():
        value = getattr(args, name)
        if value != default:
            flags += f" --{name} " + (" ".join(map(str, value)) if name == "seeds" else str(value))
    lines = [f"`PYTHONPATH=src python -m lawn.harness.studies.nested{flags}`", ""]
    lines += [f"Seeds {list(args.seeds)}; train {args.train}, test {args.test}, OOD {args.ood}+{args.ood}; "
             f"{args.epochs} epochs, Adam lr {args.lr}, batch {args.batch}, prior π = {args.prior}, "
             f"{args.samples} MC samples for bayes_nested.", ""]  # fmt: skip
    for metric, _ in METRICS:
        lines += [f"**{metric}** (mean ± std over seeds)", "", "| arm | " + " | ".join(f"width {w}" for w in WIDTHS)
                  + " |", "|---|" + "---|" * len(WIDTHS)]  # fmt: skip
        lines += [f"| {arm} | " + " | ".join(cell(arm, w, metric) for w in WIDTHS) + " |" for arm in ARMS]
        lines.append("")
    lines += ["**Paired differences against nested_dropout** (same seed; sign chosen so > 0 is better; "
              "`n/3` = seeds where the arm is better)", "",
              "| arm | metric | " + " | ".join(f"width {w}" for w in WIDTHS) + " | better at every width? |",
              "|---|---|" + "---|" * (len(WIDTHS) + 1)]  # fmt: skip
    for arm in ("learned_order", "bayes_nested", "bayes_mean"):
        for metric, sign in METRICS:
            cells, every = [], True
            for w in WIDTHS:
                base = {r["seed"]: r[metric] for r in rows if r["arm"] == "nested_dropout" and r["width"] == w}
                d = np.array(
                    [sign * (r[metric] - base[r["seed"]]) for r in rows if r["arm"] == arm and r["width"] == w]
                )
                wins = int((d > 0).sum())
                every &= wins == len(d) and len(d) > 0
                cells.append(f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f} ({wins}/{len(d)})")
            lines.append(f"| {arm} | {metric} | " + " | ".join(cells) + f" | {'yes' if every else 'no'} |")
    lines += ["", "**Sliced bayes_nested models** (seed " + str(args.seeds[0]) + "; forward of 256 test images, "
              "1 thread, median of " + str(args.reps) + " runs)", "",
              "| width | parameters | sliced ms | masked full model ms | max abs diff sliced vs masked |",
              "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {t['width']} | {t['params']:,} | {t['sliced_ms']:.2f} | {t['masked_ms']:.2f} | "
              f"{t['max_abs_diff']:.1e} |" for t in timing]  # fmt: skip
    cpu = sum({(r["arm"], r["seed"], r["width"] if r["arm"] == "narrow" else 0): r["train_cpu_s"] for r in rows
               if r["arm"] != "bayes_mean"}.values())  # fmt: skip
    lines += ["", f"Training CPU time, all arms and seeds: {cpu / 60:.1f} CPU-min.", ""]
    return "\n".join(lines)


DEFAULTS = {
    "seeds": [0, 1, 2],
    "train": 5000,
    "test": 2000,
    "ood": 500,
    "epochs": 8,
    "lr": 2e-3,
    "batch": 128,
    "prior": 0.7,
    "samples": 8,
    "reps": 20,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/results/nested")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--ood", type=int, default=500)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--prior", type=float, default=0.7)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--report-only", action="store_true", help="rebuild report.md from --out's rows and timing")
    args = p.parse_args(argv)
    if args.report_only:
        out = Path(args.out)
        rows, timing = ([json.loads(line) for line in (out / name).read_text().splitlines() if line.strip()]
                        for name in ("rows.jsonl", "timing.jsonl"))  # fmt: skip
        (out / "report.md").write_text(report(rows, timing, args))
        print((out / "report.md").read_text())
    else:
        run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
