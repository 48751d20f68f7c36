"""Bad input: a clear error naming the culprit, raised before anything is modified."""

import copy

import pytest
import torch

import lawn
from lawn_helpers import BNNet, assert_same_tree, batches, snapshot, train_step


@pytest.fixture
def model():
    torch.manual_seed(0)
    return BNNet()


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"free_steps": -1}, ValueError, "free_steps"),
        ({"free_steps": 2.5}, TypeError, "free_steps"),
        ({"free_steps": True}, TypeError, "free_steps"),
        ({"granularity": "column"}, ValueError, "granularity"),
        ({"project_gradient": "yes"}, TypeError, "project_gradient"),
        ({"target_scale": 0.0}, ValueError, "target_scale"),
        ({"target_scale": float("nan")}, ValueError, "target_scale"),
        ({"foreach": "fast"}, TypeError, "foreach"),
        ({"compiled": "yes"}, TypeError, "compiled"),
        ({"compiled": True, "foreach": False}, ValueError, "compiled"),
        ({"fused": 1}, TypeError, "fused"),
        ({"fused": True, "foreach": False}, ValueError, "fused"),
        ({"fused": True, "compiled": True}, ValueError, "fused and compiled"),
    ],
)
def test_bad_options_are_named(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        lawn.LAWN(adam(model), model.tail(), **kwargs)


def test_base_must_be_an_optimizer(model):
    with pytest.raises(TypeError, match="base"):
        lawn.LAWN(model, model.tail())


def test_param_not_held_by_base_is_named(model):
    base = torch.optim.Adam(model.stem.parameters())
    with pytest.raises(ValueError, match="'hidden.weight' is not held by the base optimizer"):
        lawn.LAWN(base, model.tail())


def test_duplicate_param_is_named(model):
    with pytest.raises(ValueError, match="'again' is listed twice"):
        lawn.LAWN(adam(model), [("head.weight", model.head.weight), ("again", model.head.weight)])


def test_unnamed_params_are_named_by_their_place_in_the_base(model):
    stray = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"params\[1\]"):
        lawn.LAWN(adam(model), [model.head.weight, stray])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\]"):
        lawn.LAWN(adam(model), [model.stem.bias, model.stem.bias])


@pytest.mark.parametrize("name", ["head.bias", "bn.weight"])
def test_row_granularity_rejects_vectors(model, name):
    p = dict(model.named_parameters())[name]
    with pytest.raises(ValueError, match=f"'{name}' has 1 dim"):
        lawn.LAWN(adam(model), [(name, p)], granularity="row")


def test_non_tensors_and_empty_selections(model):
    with pytest.raises(TypeError, match=r"params\[0\]"):
        lawn.LAWN(adam(model), ["head.weight"])
    with pytest.raises(TypeError, match="not one tensor"):
        lawn.LAWN(adam(model), model.head.weight)
    with pytest.raises(ValueError, match="no tensors"):
        lawn.LAWN(adam(model), [])


def test_wrapping_twice_is_refused(model):
    opt = lawn.LAWN(adam(model), model.tail())
    with pytest.raises(ValueError, match="already (wrapped|constrained)"):
        lawn.LAWN(opt, model.tail())


def test_zero_norm_at_the_switch_names_the_tensor_and_changes_nothing(model):
    with torch.no_grad():
        model.head.weight.zero_()
    opt = lawn.LAWN(adam(model), model.tail(), free_steps=10)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="'head.weight' has norm 0"):
        opt.freeze()
    assert opt.phase == "free"
    assert_same_tree(before, snapshot(model, opt))


def test_zero_row_is_named_with_its_row(model):
    with torch.no_grad():
        model.head.weight[2].zero_()
    opt = lawn.LAWN(adam(model), model.tail(), free_steps=10, granularity="row")
    with pytest.raises(ValueError, match=r"'head.weight' \(row 2\)"):
        opt.freeze()


def test_non_finite_norm_at_construction(model):
    with torch.no_grad():
        model.hidden.weight[0, 0] = float("inf")
    base = adam(model)
    with pytest.raises(ValueError, match="'hidden.weight' has norm inf"):
        lawn.LAWN(base, model.tail(), free_steps=0)
    assert len(base.state) == 0
    assert not any(key.startswith("lawn_") for key in [*base.param_groups[0], *base.defaults])


def test_sparse_gradient_is_refused_before_anything_moves():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = lawn.LAWN(torch.optim.SGD(emb.parameters(), lr=0.1), [("emb.weight", emb.weight)], free_steps=0)
    emb(torch.tensor([1, 2])).sum().backward()
    weight_before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="'emb.weight' has a sparse gradient"):
        opt.step()
    assert torch.equal(emb.weight, weight_before) and opt.steps == 0


def test_bad_checkpoint_is_refused_before_loading(model):
    opt = lawn.LAWN(adam(model), model.tail(), free_steps=1)
    train_step(model, opt, *batches(1)[0])
    sd = copy.deepcopy(opt.state_dict())
    head_id = [i for i, p in enumerate(model.parameters()) if p is model.head.weight][0]
    sd["param_groups"][0]["lawn_target_norms"][head_id] = torch.ones(3)
    other = lawn.LAWN(adam(model), model.tail(), free_steps=1)
    before = snapshot(model, other)
    with pytest.raises(ValueError, match="target of 'head.weight' has shape"):
        other.load_state_dict(sd)
    assert_same_tree(before, snapshot(model, other))
    sd["param_groups"][0]["lawn_target_norms"][head_id] = None
    with pytest.raises(ValueError, match="no target norm for \\['head.weight'\\]"):
        other.load_state_dict(sd)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lawn_steps", "3", "lawn_steps='3'"),
        ("lawn_steps", -1, "lawn_steps=-1"),
        ("lawn_frozen", None, "lawn_frozen=None"),
        ("lawn_switch_step", 1.5, "lawn_switch_step=1.5"),
        ("lawn_retract_every", 0, "retract_every"),
        ("lawn_project_gradient", "yes", "project_gradient"),
        ("lawn_target_scale", -1.0, "target_scale"),
        ("lawn_fixed_target", float("nan"), "target_norm"),
        ("lawn_auto_check_every", 0, "check_every"),
        ("target", -1.0, "target norm of 'head.weight' .* is -1.0"),
        ("target", float("nan"), "target norm of 'head.weight' .* is nan"),
    ],
)
def test_corrupt_checkpoint_values_are_refused_before_loading(model, key, value, match):
    """A value no run can leave (a counter that is not a count, an option out of range, a negative or NaN target)
    is refused by load_state_dict, before anything changes; accepted, it failed in the middle of a later step
    (after the base stepped) or flipped or stopped retracting the weight."""
    free_steps = "auto" if key.startswith("lawn_auto") else 1
    opt = lawn.LAWN(adam(model), model.tail(), free_steps=free_steps)
    opt.freeze()
    train_step(model, opt, *batches(1)[0])
    sd = copy.deepcopy(opt.state_dict())
    head_id = [i for i, p in enumerate(model.parameters()) if p is model.head.weight][0]
    for group in sd["param_groups"]:
        if key == "target":
            group["lawn_target_norms"][head_id] = torch.tensor(value)
        else:
            group[key] = value
    other = lawn.LAWN(adam(model), model.tail(), free_steps=free_steps)
    before = snapshot(model, other)
    with pytest.raises((TypeError, ValueError), match=match):
        other.load_state_dict(sd)
    assert_same_tree(before, snapshot(model, other))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lawn_retract_every", 0, "retract_every"),
        ("lawn_target_scale", -1.0, "target_scale"),
        ("lawn_granularity", "rows", "granularity"),
        ("lawn_free_steps", "soon", "free_steps"),
    ],
)
@pytest.mark.parametrize("options", [{}, {"fused": False}, {"foreach": False}], ids=["fused_step", "foreach", "ref"])
def test_an_option_set_by_hand_in_param_groups_is_checked_before_the_step_moves_anything(
    model, key, value, match, options
):
    """How a resumed run changes an option (load_state_dict's warning says so): set it in every param group. A bad
    value was used mid-step, after the base had stepped; now the step refuses it first and changes nothing."""
    opt = lawn.LAWN(adam(model), model.tail(), free_steps=1, **options)
    train_step(model, opt, *batches(1)[0])  # past the switch: the constrained step reads every option
    for group in opt.param_groups:
        group[key] = value
    x, y = batches(2)[1]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    before = snapshot(model, opt)
    with pytest.raises((TypeError, ValueError), match=f"param group 0 holds an invalid lawn_\\* option .*{match}"):
        opt.step()
    assert_same_tree(before, snapshot(model, opt))
    for group in opt.param_groups:  # a valid value set by hand is taken
        group["lawn_retract_every"], group["lawn_target_scale"] = 2, 1.0
        group["lawn_granularity"], group["lawn_free_steps"] = "tensor", 1
    opt.step()
    assert opt.steps == 2


def test_a_checkpoint_over_other_parameters_is_named_by_its_count(model):
    opt = lawn.LAWN(adam(model), model.tail(), free_steps=1)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    with pytest.raises(ValueError, match="param group 0 of the checkpoint has 7 parameters, this optimizer's has 8"):
        lawn.LAWN(adam(model), model.tail(), free_steps=1).load_state_dict(sd)


@pytest.mark.parametrize(("every", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_retract_every_is_named(model, every, error):
    with pytest.raises(error, match="retract_every"):
        lawn.NormConstraint(adam(model), model.tail(), free_steps=1, retract_every=every)


# ----------------------------------------------------------------------------- units pruned on purpose
def _pruned_model(how: str) -> tuple[BNNet, torch.Tensor]:
    """BNNet whose head has output unit 1 removed by a mask (its stored row is zero), with that stored tensor."""
    torch.manual_seed(0)
    model = BNNet()
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[1] = False
    if how == "lawn.pruning.apply_masks":
        lawn.pruning.apply_masks(model, {"head.weight": mask})  # zeroes the stored row too
        return model, model.head.parametrizations.weight.original
    from torch.nn.utils import prune

    prune.custom_from_mask(model.head, "weight", mask)
    with torch.no_grad():
        model.head.weight_orig[1].zero_()  # torch keeps the pruned values: make the row exactly zero
    return model, model.head.weight_orig


@pytest.mark.parametrize("options", [{}, {"fused": False}, {"foreach": False}], ids=["fused_step", "foreach", "ref"])
@pytest.mark.parametrize("how", ["lawn.pruning.apply_masks", "torch.nn.utils.prune"])
@pytest.mark.parametrize("select", ["all_layer_weights", "discovery"])
def test_a_unit_pruned_on_purpose_stays_zero_and_is_skipped_under_row_granularity(select, how, options):
    model, stored = _pruned_model(how)
    weights = (
        lawn.all_layer_weights(model)
        if select == "all_layer_weights"
        else lawn.final_homogeneous_params(model, batches(1)[0][0])
    )
    opt = lawn.LAWN(adam(model), weights, free_steps=1, granularity="row", **options)
    for xb, yb in batches(4):
        train_step(model, opt, xb, yb)  # was: "row 1 has norm 0.0" at the switch and at every later step
    assert opt.phase == "constrained" and opt.switch_step == 1
    name = next(name for name, p in weights if p is stored)
    target = opt.target_norms[name]
    assert float(target[1]) == 0.0 and bool((target[[0, 2, 3]] > 0).all())
    assert bool((stored.detach()[1] == 0).all())  # stays exactly zero
    torch.testing.assert_close(lawn.norms(stored, "row")[[0, 2, 3]], target[[0, 2, 3]], rtol=1e-5, atol=0)


def test_an_accidental_zero_row_is_refused_even_in_a_masked_weight(model):
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[1] = False
    lawn.pruning.apply_masks(model, {"head.weight": mask})
    with torch.no_grad():
        model.head.parametrizations.weight.original[2].zero_()  # zero, but not masked
    opt = lawn.LAWN(adam(model), lawn.all_layer_weights(model), free_steps=10, granularity="row")
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"'head.parametrizations.weight.original' \(row 2\) has norm 0"):
        opt.freeze()
    assert opt.phase == "free"
    assert_same_tree(before, snapshot(model, opt))
    stored = model.head.parametrizations.weight.original
    plain = lawn.LAWN(adam(model), [("w", stored)], free_steps=10, granularity="row")
    with pytest.raises(ValueError, match=r"'w' \(row 1\) has norm 0.*pruned on purpose is skipped when its mask"):
        plain.freeze()  # a plain entry carries no mask: its zero rows are all refused, and the message says why
