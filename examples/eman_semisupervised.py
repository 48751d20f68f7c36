"""Semi-supervised digits with a moving-average teacher: plain EMA teacher vs EMAN (FixMatch-style).

sklearn's 8×8 digits (bundled, nothing downloads), a stratified test split, and only ``--label-fraction`` of
the training labels. Each step the student learns from a labeled batch and from an unlabeled batch: the
teacher labels a weakly augmented view, and the student is trained on a strongly augmented view of the
same images wherever the teacher is confident (probability ≥ ``--threshold``), as in EMAN's FixMatch.

* ``ema``: :class:`lawn.EMATeacher`, parameters averaged, BN with the unlabeled batch's statistics.
* ``eman``: :class:`lawn.EMAN`, parameters and BN statistics averaged, teacher in eval mode.
* ``supervised``: the labeled batches only (no teacher), for reference.

Usage::

    PYTHONPATH=src python examples/eman_semisupervised.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

from lawn import EMAN, EMATeacher


def small_cnn() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    )  # fmt: skip


def shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pixels`` in each direction (zero padding)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def weak(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return shift(x, 1, generator)


def strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift by up to 2 px, scale contrast, erase a 3×3 patch, add noise."""
    n = x.shape[0]
    x = shift(x, 2, generator)
    x = x * (0.5 + torch.rand(n, 1, 1, 1, generator=generator))
    top, left = torch.randint(0, 6, (2, n), generator=generator)
    r, c = torch.arange(8)[None, :, None], torch.arange(8)[None, None, :]
    patch = (r >= top[:, None, None]) & (r < top[:, None, None] + 3) & (c >= left[:, None, None])
    patch &= c < left[:, None, None] + 3
    x = x.masked_fill(patch.unsqueeze(1), 0.0)
    return x + 0.1 * torch.randn(x.shape, generator=generator)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    training = model.training
    model.eval()
    correct = (model(x).argmax(1) == y).float().mean().item()
    model.train(training)
    return correct


def run(method: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=seed)
    labeled_idx, _ = train_test_split(
        train_idx, train_size=args.label_fraction, stratify=y[train_idx], random_state=seed
    )
    xl, yl, xu, yu = x[labeled_idx], y[labeled_idx], x[train_idx], y[train_idx]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = small_cnn()
    teacher = {"ema": EMATeacher, "eman": EMAN, "supervised": None}[method]
    teacher = teacher(student, momentum=args.momentum) if teacher else None
    optimizer = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    masked = correct_pseudo = 0.0
    for _ in range(args.steps):
        i = torch.randint(0, len(xl), (args.batch_size,), generator=generator)
        if teacher is None:
            loss = F.cross_entropy(student(weak(xl[i], generator)), yl[i])
        else:
            j = torch.randint(0, len(xu), (args.mu * args.batch_size,), generator=generator)
            confidence, pseudo = teacher(weak(xu[j], generator)).softmax(1).max(1)
            mask = (confidence >= args.threshold).float()
            # one student batch (labeled weak + unlabeled strong), so BN sees both, as in EMAN's FixMatch
            logits = student(torch.cat([weak(xl[i], generator), strong(xu[j], generator)]))
            loss_u = (F.cross_entropy(logits[len(i) :], pseudo, reduction="none") * mask).mean()
            loss = F.cross_entropy(logits[: len(i)], yl[i]) + args.lambda_u * loss_u
            masked += mask.mean().item()
            correct_pseudo += ((pseudo == yu[j]).float() * mask).sum().item() / max(mask.sum().item(), 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if teacher is not None:
            teacher.update()
    result = {"student": accuracy(student, x[test_idx], y[test_idx])}
    if teacher is not None:
        result["teacher"] = accuracy(teacher.teacher, x[test_idx], y[test_idx])
        result["mask"] = masked / args.steps
        result["pseudo_acc"] = correct_pseudo / args.steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["supervised", "ema", "eman"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--label-fraction", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mu", type=int, default=4, help="unlabeled batch = mu × batch size")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--momentum", type=float, default=0.99, help="teacher EMA momentum")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--lambda-u", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{vars(args)}")
    print("| method | seed | student test acc | teacher test acc | mask rate | pseudo-label acc | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary: dict[str, list[dict[str, float]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            start = time.perf_counter()
            r = run(method, seed, args)
            summary.setdefault(method, []).append(r)
            cells = [f"{r[k]:.3f}" if k in r else "–" for k in ("student", "teacher", "mask", "pseudo_acc")]
            print(f"| {method} | {seed} | {' | '.join(cells)} | {time.perf_counter() - start:.0f} |", flush=True)
    print("\nmean ± std over seeds")
    for method, results in summary.items():
        parts = []
        for key in ("student", "teacher"):
            if key in results[0]:
                values = np.array([r[key] for r in results])
                parts.append(f"{key} {values.mean():.3f} ± {values.std():.3f}")
        print(f"{method}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
