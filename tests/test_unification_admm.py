"""lawn.unification.ADMM and harden: the Z/U step, ρ schedule, hardening, retraining with any optimizer, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lawn.unification import ADMM, DENSE, PRUNED, UNIFIED, BlockSpec, harden, hardened_layers, project
from lawn.unification.blocks import block_counts, grid_to_rows, to_blocks
from unification_helpers import small_convnet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


_model = small_convnet


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, admm: ADMM | None = None) -> None:
    x, y = _data()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        if admm is not None:
            loss = loss + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if admm is not None:
            admm.update()


def _assert_structure(model: nn.Module, kinds: dict[str, torch.Tensor]) -> None:
    """Within every unified block all |w| are equal (exactly) with the frozen signs; pruned blocks exactly 0."""
    layers = {f"{name}.weight": (module, param) for name, module, param in hardened_layers(model)}
    assert set(layers) == set(kinds)
    for name, (module, param) in layers.items():
        assert torch.equal(param.kinds, kinds[name])
        blocks = to_blocks(module.weight.detach(), param.size)
        rows = grid_to_rows(param.kinds)
        assert bool((blocks[rows == PRUNED] == 0).all())
        unified = blocks[rows == UNIFIED]
        assert bool((unified.abs() == unified.abs()[:, :1]).all())
        nonzero = unified[:, 0] != 0
        assert torch.equal(torch.sign(unified[nonzero]), param.signs[nonzero])


def test_admm_z_u_step_and_penalty_follow_the_formulas() -> None:
    model = _model()
    admm = ADMM(model, BlockSpec(4), unify=0.5, prune=0.25, rho=0.5, update_every=3, rho_growth=2.0, rho_max=1.5)
    assert admm.names == ["3.weight", "6.weight", "8.weight"] and admm.skipped == ["0.weight"]
    weights = [model[3].weight, model[6].weight, model[8].weight]
    for w, z in zip(weights, admm.z, strict=True):  # Z starts at Π(W), U at 0
        assert torch.equal(z, project(w, BlockSpec(4), 0.5, 0.25)[0])
    with torch.no_grad():
        for w in weights:
            w.add_(0.1)
    expected = 0.5 * 0.5 * sum(float(((w.detach() - z) ** 2).sum()) for w, z in zip(weights, admm.z, strict=True))
    assert float(admm.penalty().detach()) == pytest.approx(expected, rel=1e-5)
    assert admm.update() is False and admm.update() is False
    u_before = [u.clone() for u in admm.u]
    assert admm.update() is True  # the third call: Z ← Π(W + U), U ← (U + W − Z)·ρ_old/ρ_new, ρ ← min(2ρ, 1.5)
    assert admm.rho == 1.0
    for w, z, u, u0 in zip(weights, admm.z, admm.u, u_before, strict=True):
        z_expected = project(w + u0, BlockSpec(4), 0.5, 0.25)[0]
        assert torch.equal(z, z_expected)
        assert torch.allclose(u, (u0 + w - z_expected) * 0.5)
    admm.update(force=True)
    assert admm.rho == 1.5  # capped


def test_admm_drives_weights_into_the_set_then_harden_is_exact() -> None:
    model = _model()
    admm = ADMM(model, BlockSpec(4), unify=0.5, prune=0.25, rho=0.05, update_every=5, rho_growth=1.5, rho_max=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # lr·ρ_max = 0.25: the quadratic penalty stays stable
    start = admm.residual()
    _train(model, opt, 80, admm)
    assert admm.residual() < 0.05 * start
    x, _ = _data()
    kinds = admm.harden()
    assert set(kinds) == set(admm.names)
    _assert_structure(model, kinds)
    assert model(x).shape == (32, 3)
    with pytest.raises(RuntimeError, match="already hardened"):
        admm.penalty()


def test_harden_is_the_projection() -> None:
    model = _model()
    before = model[6].weight.detach().clone()
    kinds = harden(model, BlockSpec(4), unify=0.5, prune=0.25, params=["6.weight"])
    projected, expected_kinds = project(before, BlockSpec(4), 0.5, 0.25)
    assert torch.equal(kinds["6.weight"], expected_kinds)
    assert torch.allclose(model[6].weight, projected, atol=1e-7)
    assert [name for name, _, _ in hardened_layers(model)] == ["6"]


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd_momentum", "adam", "adamw"],
)
def test_structure_survives_retraining_with_any_optimizer(make_opt) -> None:
    model = _model()
    kinds = harden(model, BlockSpec(4), unify=0.5, prune=0.25)
    before = {name: module.weight.detach().clone() for name, module, _ in hardened_layers(model)}
    opt = make_opt(model.parameters())
    _train(model, opt, 25)
    _assert_structure(model, kinds)
    for name, module, _ in hardened_layers(model):
        assert not torch.equal(module.weight, before[name])  # it did train (dense values and magnitudes moved)
    for grid in kinds.values():
        n_prune, n_unify = block_counts(grid.numel(), 0.5, 0.25)
        assert (int((grid == PRUNED).sum()), int((grid == UNIFIED).sum())) == (n_prune, n_unify)
        assert int((grid == DENSE).sum()) == grid.numel() - n_prune - n_unify


def test_a_magnitude_pushed_below_zero_gives_a_zero_block_not_flipped_signs() -> None:
    model = nn.Linear(4, 1)
    harden(model, BlockSpec(4), unify=1.0, prune=0.0)
    with torch.no_grad():
        model.parametrizations.weight.original1.fill_(-0.3)
    assert torch.equal(model.weight, torch.zeros(1, 4))


def test_params_by_name_or_tensor_and_refusals() -> None:
    model = _model()
    admm = ADMM(model, BlockSpec(4), params=[model[6].weight, "8.weight"])
    assert admm.names == ["6.weight", "8.weight"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for params, match in [
        (["0.weight"], r"0.weight: block size 4 does not divide its input dimension 1"),
        (["1.weight"], "no input dimension"),
        (["6.bias"], "'6.bias' is not the 'weight' of a module"),
        (["nope.weight"], "'nope.weight' is not the 'weight' of a module"),
        ([torch.nn.Parameter(torch.randn(4, 4))], "is not the weight of any module"),
    ]:
        with pytest.raises(ValueError, match=match):
            ADMM(model, BlockSpec(4), params=params)
        with pytest.raises(ValueError, match=match):
            harden(model, BlockSpec(4), params=["3.weight", *params])
    assert not list(hardened_layers(model))  # nothing changed by the refused calls
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    harden(model, BlockSpec(4), params=["3.weight"])
    with pytest.raises(ValueError, match="3.weight is already hardened"):
        harden(model, BlockSpec(4), params=["3.weight"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rho": 0.0}, "rho=0.0"),
        ({"rho": float("nan")}, "rho=nan"),
        ({"update_every": 0}, "update_every=0"),
        ({"update_every": 2.5}, "update_every=2.5"),
        ({"unify": 0.8, "prune": 0.3}, "sum to at most 1"),
        ({"rho": 1.0, "rho_max": 0.5}, "rho_max=0.5"),
    ],
)
def test_bad_admm_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ADMM(_model(), BlockSpec(4), **kwargs)


def test_a_model_with_nothing_to_unify() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"nothing to unify.*\['0.weight', '2.weight'\]"):
        ADMM(model, BlockSpec(4))
    with pytest.raises(ValueError, match="nothing to unify"):
        harden(nn.Sequential(nn.ReLU()), BlockSpec(4))


def test_admm_state_dict_round_trip() -> None:
    model = _model()
    admm = ADMM(model, BlockSpec(4), rho=0.1, update_every=1, rho_growth=1.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train(model, opt, 3, admm)
    other = ADMM(model, BlockSpec(4), rho=0.1, update_every=1, rho_growth=1.1)
    other.load_state_dict(admm.state_dict())
    assert other.rho == admm.rho and other.steps == 3
    assert torch.equal(other.penalty(), admm.penalty())


def test_state_dict_with_other_kinds_loads_into_a_hardened_model() -> None:
    """Same fractions, different kinds (same tensor shapes): loading a state_dict must follow the new kinds."""
    a, b = _model(0), _model(1)
    harden(a, BlockSpec(4), unify=0.5, prune=0.25)
    harden(b, BlockSpec(4), unify=0.5, prune=0.25)
    assert not torch.equal(a[3].parametrizations.weight[0].kinds, b[3].parametrizations.weight[0].kinds)
    b.load_state_dict(a.state_dict())
    x, _ = _data()
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("unify,prune", [(1.0, 0.0), (0.0, 1.0)])
def test_all_blocks_one_kind_trains(unify: float, prune: float) -> None:
    model = _model()
    kinds = harden(model, BlockSpec(4), unify=unify, prune=prune)
    _train(model, torch.optim.Adam(model.parameters(), lr=0.01), 2)
    _assert_structure(model, kinds)
