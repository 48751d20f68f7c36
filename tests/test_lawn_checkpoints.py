"""LAWN checkpoints: nothing is lost, whatever the base optimizer's layout; a bad checkpoint changes nothing."""

import copy
import os
import tempfile
import warnings

import pytest
import torch

import lawn
from lawn_helpers import BNNet, assert_same_tree, batches, roundtrip, snapshot, train_step

TARGETS_KEY = "lawn_target_norms"  # where LAWN keeps its targets (lawn.constraint.engine.TARGETS_KEY)


def _model(seed: int = 0) -> BNNet:
    torch.manual_seed(seed)
    return BNNet()


def _lawn(model: BNNet, base: torch.optim.Optimizer | None = None, **options) -> lawn.LAWN:
    base = base if base is not None else torch.optim.Adam(model.parameters(), lr=1e-2)
    return lawn.LAWN(base, model.tail(), **{"free_steps": 2, **options})


def test_bare_base_checkpoint_past_the_switch_keeps_the_targets():
    model = _model()
    bare = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_step(model, bare, *batches(1)[0])
    opt = _lawn(model, free_steps=0)
    targets = {name: t.clone() for name, t in opt.target_norms.items()}
    opt.load_state_dict(roundtrip(bare.state_dict()))
    assert opt.phase == "constrained"
    assert_same_tree(targets, dict(opt.target_norms))
    for xb, yb in batches(3):
        train_step(model, opt, xb, yb)
    for name, p in model.tail():
        assert lawn.norms(p).item() == pytest.approx(targets[name].item(), rel=1e-5)


def test_targets_live_in_param_groups_and_a_plain_optimizer_loads_the_checkpoint():
    model = _model()
    opt = _lawn(model, free_steps=0)  # before the first gradient: LAWN's entries only
    sd = roundtrip(opt.state_dict())
    assert all(not any(k.startswith("lawn") for k in entry) for entry in sd["state"].values())
    assert sum(t is not None for t in sd["param_groups"][0][TARGETS_KEY]) == 2
    plain = torch.optim.Adam(model.parameters(), lr=1e-2)
    plain.load_state_dict(sd)  # was KeyError: 'step'
    train_step(model, plain, *batches(1)[0])
    fresh = _lawn(model, torch.optim.Adam(model.parameters(), lr=1e-2), free_steps=0)
    fresh.load_state_dict(roundtrip(plain.state_dict()))  # and back: the entries rode along in param_groups
    assert_same_tree(dict(opt.target_norms), dict(fresh.target_norms))


def _zero_run(tmp: str, steps: int, resume_at: int | None) -> list[torch.Tensor]:
    """LAWN around ZeroRedundancyOptimizer (one process), optionally checkpointed and rebuilt at ``resume_at``."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    def build(model: BNNet) -> lawn.LAWN:
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=1e-2)
        return lawn.LAWN(zero, model.tail(), free_steps=2)

    model = _model()
    opt = build(model)
    for i, (xb, yb) in enumerate(batches(steps)):
        if i == resume_at:
            opt.base.consolidate_state_dict(to=0)
            checkpoint = roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})
            model = _model(seed=1)
            opt = build(model)
            model.load_state_dict(checkpoint["model"])
            opt.load_state_dict(checkpoint["opt"])
            assert opt.phase == "constrained" and opt.steps == resume_at
        train_step(model, opt, xb, yb)
    return [p.detach().clone() for p in model.parameters()]


def test_zero_redundancy_optimizer_checkpoint_resumes():
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        try:
            straight = _zero_run(tmp, 5, None)
            resumed = _zero_run(tmp, 5, 3)
        finally:
            dist.destroy_process_group()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["lookahead", "spam"])
def test_bases_with_their_own_layout_resume_bit_identically(kind):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

    def base(model: BNNet) -> torch.optim.Optimizer:
        if kind == "lookahead":
            return pytorch_optimizer.Lookahead(torch.optim.Adam(model.parameters(), lr=1e-2), k=2)
        return pytorch_optimizer.SPAM(model.parameters(), lr=1e-2)

    data = batches(5)
    model = _model()
    opt = _lawn(model, base(model))
    for xb, yb in data:
        train_step(model, opt, xb, yb)
    model_b = _model()
    opt_b = _lawn(model_b, base(model_b))
    for xb, yb in data[:3]:
        train_step(model_b, opt_b, xb, yb)
    checkpoint = roundtrip({"model": model_b.state_dict(), "opt": opt_b.state_dict()})
    model_c = _model(seed=1)
    opt_c = _lawn(model_c, base(model_c))
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["opt"])  # was KeyError: 'param_groups' / TypeError
    assert opt_c.steps == 3 and opt_c.phase == "constrained"
    for xb, yb in data[3:]:
        train_step(model_c, opt_c, xb, yb)
    for a, c in zip(model.parameters(), model_c.parameters()):
        assert torch.equal(a, c)


def test_state_dict_hooks_run_around_the_delegated_calls():
    model = _model()
    opt = _lawn(model)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append(("load-pre", sd.get("extra"))))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert calls == ["save-pre", ("load-pre", 1), "load-post"]


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_resume_is_bit_identical_whatever_is_loaded_first(granularity):
    data = batches(6)
    model = _model()
    opt = _lawn(model, granularity=granularity)
    for xb, yb in data:
        train_step(model, opt, xb, yb)
    model_b = _model()
    opt_b = _lawn(model_b, granularity=granularity)
    for xb, yb in data[:4]:
        train_step(model_b, opt_b, xb, yb)
    checkpoint = roundtrip({"model": model_b.state_dict(), "opt": opt_b.state_dict()})
    model_c = _model(seed=1)
    opt_c = _lawn(model_c, granularity=granularity)
    opt_c.load_state_dict(checkpoint["opt"])  # the optimizer first, then the weights
    model_c.load_state_dict(checkpoint["model"])
    for xb, yb in data[4:]:
        train_step(model_c, opt_c, xb, yb)
    for a, c in zip(model.parameters(), model_c.parameters()):
        assert torch.equal(a, c)


def test_options_that_differ_from_the_constructor_warn_and_the_checkpoint_wins():
    model = _model()
    opt = _lawn(model, project_gradient=True)
    train_step(model, opt, *batches(1)[0])
    ablation = _lawn(model, torch.optim.Adam(model.parameters(), lr=1e-2), project_gradient=False)
    with pytest.warns(UserWarning, match=r"lawn_project_gradient=True \(constructor: False\)"):
        ablation.load_state_dict(roundtrip(opt.state_dict()))
    assert ablation.param_groups[0]["lawn_project_gradient"] is True
    same = _lawn(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(roundtrip(opt.state_dict()))


def test_bad_checkpoint_changes_nothing():
    model = _model()
    opt = _lawn(model)
    for xb, yb in batches(3):
        train_step(model, opt, xb, yb)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0][TARGETS_KEY] = sd["param_groups"][0][TARGETS_KEY][:-1]
    other = _lawn(model)
    before = snapshot(model, other)
    with pytest.raises(ValueError, match="one entry per parameter"):
        other.load_state_dict(sd)
    assert_same_tree(before, snapshot(model, other))
