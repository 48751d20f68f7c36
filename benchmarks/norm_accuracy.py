"""How accurate is an fp32 norm on CPU? torch's ``vector_norm`` against lawn's fused kernel, both checked in fp64.

    PYTHONPATH=src python benchmarks/norm_accuracy.py

For vectors of standard normal entries of growing size it prints the relative error of ``‖w‖`` from
``torch.linalg.vector_norm`` (fp32), from ``torch.dot(w, w).sqrt()`` (fp32) and after a retraction onto a target
by lawn's fused kernel (``fused_retract_``; the fp64 norm of the result against the target).
"""

from __future__ import annotations

import torch

from lawn.constraint.fused import available, fused_retract_

SIZES = (4_608, 65_536, 1_048_576, 2_359_296, 9_437_184)


def relative_errors(n: int, seed: int = 0) -> dict[str, float]:
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    exact = w.double().norm().item()
    out = {
        "torch vector_norm": torch.linalg.vector_norm(w).item() / exact - 1,
        "torch dot": torch.dot(w, w).sqrt().item() / exact - 1,
    }
    if available():
        target = torch.tensor(exact, dtype=torch.float32)
        fused_retract_([w], [target], "tensor")
        out["fused kernel (after retraction)"] = w.double().norm().item() / target.double().item() - 1
    return out


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); relative error of the fp32 norm")
    for n in SIZES:
        cells = ", ".join(f"{name} {abs(err):.1e}" for name, err in relative_errors(n).items())
        print(f"{n:>10,d} elements: {cells}")


if __name__ == "__main__":
    main()
