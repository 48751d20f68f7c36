"""examples/digits_adam_vs_lawn.py runs as documented: discovery picks its tail, LAWN switches and trains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_adam_vs_lawn.py"


def test_digits_example_trains_both_arms_with_the_discovered_tail() -> None:
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = module.train(False, seed=0, epochs=4, batch_size=256, lr=3e-3)
        with_lawn = module.train(True, seed=0, epochs=4, batch_size=256, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    assert 0.5 < plain <= 1.0 and 0.5 < with_lawn <= 1.0
    import lawn

    net = module.model()
    assert [n for n, _ in lawn.final_homogeneous_params(net, torch.randn(8, 64))] == ["3.weight", "5.weight"]
