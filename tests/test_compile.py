"""``torch.compile`` of the model and of LAWN's step: eager's results, no recompilation per step.

Compiling the step compiles LAWN's projection and retraction together with the base optimizer's own step.
LAWN's bookkeeping (step counter, switch) runs outside the traced region, so the changing ``lawn_steps`` never
forces a recompilation; the switch itself recompiles once (the step then takes the constrained branch).
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import lawn
from distributed_workers import TinyNet, global_batches

STEPS, FREE_STEPS = 8, 4
# lr as a tensor (PyTorch's rule for compiled optimizers): the LR scheduler then changes a tensor, not a constant
# the compiled step depends on.
BASES = {
    "sgd": lambda params: torch.optim.SGD(params, lr=torch.tensor(0.1), momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=torch.tensor(0.05)),
}
# Compiled vs eager: SGD agrees to fp32 rounding. Compiled Adam alone (no LAWN) already differs from eager Adam by
# ~5e-6 after these 8 steps (m / (sqrt(v) + eps) amplifies rounding of tiny gradients), so Adam gets a looser bound.
TOLERANCES = {"sgd": {"rtol": 1e-5, "atol": 1e-6}, "adam": {"rtol": 1e-4, "atol": 5e-5}}


def run(compile_model: bool, compile_step: bool, granularity: str = "tensor", base: str = "sgd"):
    """Train TinyNet with an LR scheduler for STEPS steps; return the model, LAWN and the number of compiled
    graphs after each step."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = TinyNet()
    opt = lawn.LAWN(BASES[base](model.parameters()), model.tail(), FREE_STEPS, granularity)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    forward = torch.compile(model) if compile_model else model

    def step() -> None:
        opt.step()

    compiled_step = torch.compile(step) if compile_step else step
    graphs = []
    for x, y in global_batches(STEPS):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        compiled_step()
        scheduler.step()
        graphs.append(counters["stats"]["unique_graphs"])
    return model, opt, graphs


def assert_same_as_eager(model, opt, granularity="tensor", base="sgd"):
    eager_model, eager_opt, _ = run(False, False, granularity, base)
    for (name, p), q in zip(model.named_parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, **TOLERANCES[base], msg=name)
    for name, target in eager_opt.target_norms.items():
        torch.testing.assert_close(opt.target_norms[name], target, **TOLERANCES[base])
    assert (opt.steps, opt.phase) == (eager_opt.steps, eager_opt.phase) == (STEPS, "constrained")


def test_compiled_model_with_lawn_matches_eager():
    model, opt, _ = run(compile_model=True, compile_step=False)
    assert_same_as_eager(model, opt)


@pytest.mark.parametrize(("base", "granularity"), [("sgd", "row"), ("adam", "tensor")])
def test_compiled_step_matches_eager_and_recompiles_only_at_the_switch(base, granularity):
    """Each compiled frame is compiled at most 3 times: first step, second step (LAWN's targets and the base's
    state now exist, the counter stops being a constant), and the switch; more would raise.

    (torch's own ``config.patch``: pytest's monkeypatch deletes config attributes on undo in pytest >= 9.2.)
    """
    with torch._dynamo.config.patch(recompile_limit=3, fail_on_recompile_limit_hit=True):
        model, opt, graphs = run(compile_model=True, compile_step=True, granularity=granularity, base=base)
    switch = FREE_STEPS  # the first constrained step is step FREE_STEPS + 1 (index FREE_STEPS)
    assert len(set(graphs[2:switch])) == 1, f"recompiled during the free phase: {graphs}"
    assert len(set(graphs[switch:])) == 1, f"recompiled during the constrained phase: {graphs}"
    assert graphs[switch] > graphs[switch - 1], "the constrained branch was never compiled"
    assert_same_as_eager(model, opt, granularity, base)
