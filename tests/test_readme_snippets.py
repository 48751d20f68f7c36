"""README snippets that claim to be complete programs run as written, in a fresh namespace: every name they use
is defined in them."""

from __future__ import annotations

import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def python_block(heading: str) -> str:
    """The first ```python block under README's ``heading``."""
    section = (ROOT / "README.md").read_text().split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_nested_networks_snippet_runs_on_its_own() -> None:
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(python_block("## Bayesian nested networks"), "README.md (nested)", "exec"), namespace)
    loss, N = namespace["loss"], namespace["N"]
    assert len(namespace["x_train"]) == N and math.isfinite(float(loss.detach()))
    probs, ece = namespace["probs"], namespace["ece"]
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs))) and 0.0 <= ece <= 1.0
    model, small, x_test = namespace["model"], namespace["small"], namespace["x_test"]
    with torch.no_grad():  # the sliced model is the masked model at width 0.5, in eval mode
        assert torch.allclose(small.eval()(x_test), model.eval()(x_test), atol=1e-5)
